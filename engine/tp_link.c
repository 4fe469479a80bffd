/* The rendezvous of tensor-parallel processes and their control messages (tp_link.h).
 *
 * On the wire, native byte order (one build on one kind of host):
 *   join      follower -> rank 0, first on each of its two connections: magic, version, rank,
 *             tp, channel (control or collectives).
 *   welcome   rank 0 -> follower, on control, once every rank joined: magic, status (0, or 1 when
 *             the rendezvous failed), length, then the hello (or the reason it failed).
 *   message   either way on control: magic, length, then the bytes. */
#include "tp_link.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/clock.h"
#include "../common/error.h"
#include "../common/socket.h"

#define JOIN_MAGIC 0x4e4a4943u    /* "CIJN" */
#define WELCOME_MAGIC 0x4c574943u /* "CIWL" */
#define MESSAGE_MAGIC 0x534d4943u /* "CIMS" */
/* A follower waits this many times the timeout for rank 0's welcome: rank 0's accept times out
 * first and names the ranks that never joined, which says more than "rank 0 never answered". */
#define JOIN_PATIENCE 2.0
enum { LINK_VERSION = 1, CHANNEL_CONTROL = 0, CHANNEL_COLLECTIVES = 1, ADDRESS_CAPACITY = 300 };

typedef struct join_message {
    uint32_t magic, version;
    int32_t rank, tp, channel, reserved;
} join_message;

typedef struct welcome_message {
    uint32_t magic;
    int32_t refused;
    uint64_t bytes;
} welcome_message;

typedef struct message_header {
    uint32_t magic, reserved;
    uint64_t bytes;
} message_header;

typedef struct inbox {
    void *data;
    size_t capacity;
} inbox;

struct ci_tp_link {
    int rank, tp;
    double timeout_seconds;
    int listen_fd;   /* rank 0, until accept */
    int *control;    /* [tp]: rank 0: [r] to follower r; a follower: [0] to rank 0; -1: none */
    int *collective; /* [tp]: the same, for the communicator, until ci_tp_link_comm takes them */
    inbox *inboxes;  /* [tp]: the last message from each peer */
    int accepted;
    char address[ADDRESS_CAPACITY];
};

static void peer_name(int rank, char *out, size_t size) {
    snprintf(out, size, "tensor-parallel rank %d", rank);
}

static cinfer_status link_new(int rank, int tp, double timeout_seconds, const char *address,
                              ci_tp_link **out) {
    ci_tp_link *link = calloc(1, sizeof *link);
    CI_CHECK_ALLOC(link, sizeof *link);
    link->control = malloc((size_t)tp * sizeof *link->control);
    link->collective = malloc((size_t)tp * sizeof *link->collective);
    link->inboxes = calloc((size_t)tp, sizeof *link->inboxes);
    if (!link->control || !link->collective || !link->inboxes) {
        free(link->control);
        free(link->collective);
        free(link->inboxes);
        free(link);
        return CI_FAIL(CINFER_ERR_MEMORY, "cannot allocate the link of %d ranks", tp);
    }
    for (int r = 0; r < tp; r++) link->control[r] = link->collective[r] = -1;
    link->rank = rank;
    link->tp = tp;
    link->timeout_seconds = timeout_seconds > 0 ? timeout_seconds : CI_COMM_DEFAULT_TIMEOUT_SECONDS;
    link->listen_fd = -1;
    snprintf(link->address, sizeof link->address, "%s", address);
    *out = link;
    return CINFER_OK;
}

void ci_tp_link_free(ci_tp_link *link) {
    if (!link) return;
    if (link->listen_fd >= 0) close(link->listen_fd);
    for (int r = 0; r < link->tp; r++) {
        if (link->control[r] >= 0) close(link->control[r]);
        if (link->collective[r] >= 0) close(link->collective[r]);
        free(link->inboxes[r].data);
    }
    free(link->control);
    free(link->collective);
    free(link->inboxes);
    free(link);
}

cinfer_status ci_tp_link_listen(const char *address, int tp, double timeout_seconds,
                                ci_tp_link **out) {
    *out = NULL;
    if (tp < 1) return CI_FAIL(CINFER_ERR_ARGUMENT, "tensor parallelism needs tp >= 1, got %d", tp);
    ci_tp_link *link = NULL;
    CI_TRY(link_new(0, tp, timeout_seconds, address, &link));
    /* a backlog for every connection of every follower: none is refused while we read a join */
    const cinfer_status status =
        ci_socket_listen(address, 2 * tp, &link->listen_fd, link->address, sizeof link->address);
    if (status != CINFER_OK) {
        ci_tp_link_free(link);
        ci_error_prefix("tensor-parallel rank 0: ");
        return status;
    }
    *out = link;
    return CINFER_OK;
}

const char *ci_tp_link_address(const ci_tp_link *link) { return link->address; }
int ci_tp_link_rank(const ci_tp_link *link) { return link->rank; }
int ci_tp_link_size(const ci_tp_link *link) { return link->tp; }

/* "2, 5": the followers that have not opened both connections */
static const char *missing_list(const ci_tp_link *link, char *buf, size_t size) {
    size_t used = 0;
    buf[0] = '\0';
    for (int r = 1; r < link->tp && used < size; r++)
        if (link->control[r] < 0 || link->collective[r] < 0)
            used += (size_t)snprintf(buf + used, size - used, "%s%d", used ? ", " : "", r);
    return buf;
}

/* Tells every follower that joined how the rendezvous ended: the hello, or why it failed. Every
 * one is tried; the first that could not be told is the status (a follower gone since it joined).
 */
static cinfer_status welcome_all(ci_tp_link *link, int refused, const void *payload, size_t bytes) {
    const welcome_message w = {WELCOME_MAGIC, refused, bytes};
    cinfer_status first = CINFER_OK;
    char peer[64];
    for (int r = 1; r < link->tp; r++) {
        if (link->control[r] < 0) continue;
        peer_name(r, peer, sizeof peer);
        cinfer_status s =
            ci_socket_send(link->control[r], &w, sizeof w, link->timeout_seconds, peer);
        if (s == CINFER_OK)
            s = ci_socket_send(link->control[r], payload, bytes, link->timeout_seconds, peer);
        if (first == CINFER_OK) first = s;
    }
    return first;
}

/* The rendezvous failed with the message already set: the followers that joined hear it too. */
static cinfer_status refuse(ci_tp_link *link, cinfer_status status) {
    ci_error_prefix("tensor-parallel rank 0 at %s: ", link->address);
    char reason[1024]; /* a copy: a failed send to a follower sets a message of its own */
    snprintf(reason, sizeof reason, "%s", cinfer_last_error());
    welcome_all(link, 1, reason, strlen(reason)); /* best effort: the reason is ours either way */
    return CI_FAIL(status, "%s", reason);
}

/* One connection's join, checked; the fd is kept in its slot, or closed. */
static cinfer_status take_join(ci_tp_link *link, int fd, double deadline) {
    char from[64];
    ci_socket_peer_name(fd, from, sizeof from);
    join_message j;
    const ci_socket_result got = ci_socket_recv_until(fd, &j, sizeof j, deadline, -1);
    cinfer_status status = CINFER_OK;
    if (got == CI_SOCKET_TIMED_OUT)
        status = CI_FAIL(CINFER_ERR_COMM,
                         "something connected from %s but said nothing a cinfer rank says", from);
    else if (got != CI_SOCKET_DONE || j.magic != JOIN_MAGIC || j.version != LINK_VERSION ||
             (j.channel != CHANNEL_CONTROL && j.channel != CHANNEL_COLLECTIVES))
        status =
            CI_FAIL(CINFER_ERR_COMM, "something that is not a cinfer rank connected from %s", from);
    else if (j.tp != link->tp)
        status = CI_FAIL(CINFER_ERR_COMM,
                         "rank %d (from %s) joined with tp = %d, but this group has tp = %d",
                         j.rank, from, j.tp, link->tp);
    else if (j.rank < 1 || j.rank >= link->tp)
        status = CI_FAIL(CINFER_ERR_COMM,
                         "a process from %s joined as rank %d; the followers of tp = %d are ranks "
                         "1 to %d",
                         from, j.rank, link->tp, link->tp - 1);
    else {
        int *slot =
            j.channel == CHANNEL_CONTROL ? &link->control[j.rank] : &link->collective[j.rank];
        if (*slot >= 0) {
            char first[64];
            ci_socket_peer_name(*slot, first, sizeof first);
            status = CI_FAIL(CINFER_ERR_COMM,
                             "rank %d joined twice (from %s, then from %s): two processes were "
                             "given the same rank",
                             j.rank, first, from);
        } else {
            *slot = fd;
            return CINFER_OK;
        }
    }
    /* a refused rank's control connection hears why, like the others */
    if (got == CI_SOCKET_DONE && j.magic == JOIN_MAGIC && j.channel == CHANNEL_CONTROL) {
        char reason[1024]; /* a copy: a failed send sets a message of its own */
        snprintf(reason, sizeof reason, "%s", cinfer_last_error());
        const welcome_message w = {WELCOME_MAGIC, 1, strlen(reason)};
        if (ci_socket_send(fd, &w, sizeof w, 1.0, from) == CINFER_OK)
            ci_socket_send(fd, reason, w.bytes, 1.0, from);
        CI_FAIL(status, "%s", reason);
    }
    close(fd);
    return status;
}

cinfer_status ci_tp_link_accept(ci_tp_link *link, const void *hello, size_t hello_bytes) {
    if (link->rank != 0 || link->accepted)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "ci_tp_link_accept: only rank 0 accepts, once");
    if (hello_bytes > CI_TP_LINK_MAX_HELLO_BYTES)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "a hello of %zu bytes; at most %d", hello_bytes,
                       CI_TP_LINK_MAX_HELLO_BYTES);
    link->accepted = 1;
    const double deadline = ci_now_seconds() + link->timeout_seconds;
    char missing[256];
    while (missing_list(link, missing, sizeof missing)[0]) {
        const double left = deadline - ci_now_seconds();
        int fd = -1;
        if (left <= 0 || ci_socket_accept(link->listen_fd, left, &fd) != CINFER_OK) {
            if (left > 0 && ci_now_seconds() < deadline) return refuse(link, CINFER_ERR_COMM);
            return refuse(link, CI_FAIL(CINFER_ERR_COMM,
                                        "rank(s) %s of tp = %d never joined within %.1f s", missing,
                                        link->tp, link->timeout_seconds));
        }
        const cinfer_status status = take_join(link, fd, deadline);
        if (status != CINFER_OK) return refuse(link, status);
    }
    close(link->listen_fd);
    link->listen_fd = -1;
    const cinfer_status status = welcome_all(link, 0, hello, hello_bytes);
    if (status != CINFER_OK) ci_error_prefix("tensor-parallel rank 0 sending the hello: ");
    return status;
}

static cinfer_status connect_as(ci_tp_link *link, int channel, double deadline, int *fd) {
    const double left = deadline - ci_now_seconds();
    if (left <= 0)
        return CI_FAIL(CINFER_ERR_COMM, "cannot connect to %s within %.1f s", link->address,
                       link->timeout_seconds);
    CI_TRY(ci_socket_connect(link->address, left, fd));
    const join_message j = {JOIN_MAGIC, LINK_VERSION, link->rank, link->tp, channel, 0};
    return ci_socket_send(*fd, &j, sizeof j, deadline - ci_now_seconds(), "tensor-parallel rank 0");
}

/* A follower's side of the rendezvous, on a link it owns. */
static cinfer_status join(ci_tp_link *link, void **hello, size_t *hello_bytes) {
    const double deadline = ci_now_seconds() + link->timeout_seconds;
    CI_TRY(connect_as(link, CHANNEL_CONTROL, deadline, &link->control[0]));
    CI_TRY(connect_as(link, CHANNEL_COLLECTIVES, deadline, &link->collective[0]));
    const double patience = ci_now_seconds() + JOIN_PATIENCE * link->timeout_seconds;
    welcome_message w;
    const ci_socket_result got = ci_socket_recv_until(link->control[0], &w, sizeof w, patience, -1);
    if (got == CI_SOCKET_TIMED_OUT)
        return CI_FAIL(CINFER_ERR_COMM,
                       "rank 0 did not welcome rank %d within %.1f s (are all %d ranks started?)",
                       link->rank, JOIN_PATIENCE * link->timeout_seconds, link->tp);
    if (got != CI_SOCKET_DONE)
        return CI_FAIL(CINFER_ERR_COMM, "rank 0 closed the connection during the rendezvous");
    if (w.magic != WELCOME_MAGIC || (!w.refused && w.bytes > CI_TP_LINK_MAX_HELLO_BYTES) ||
        w.bytes > 65536)
        return CI_FAIL(CINFER_ERR_COMM, "what answered is not a cinfer rank 0");
    char *payload = malloc(w.bytes + 1);
    CI_CHECK_ALLOC(payload, w.bytes + 1);
    if (ci_socket_recv_until(link->control[0], payload, w.bytes, patience, -1) != CI_SOCKET_DONE) {
        free(payload);
        return CI_FAIL(CINFER_ERR_COMM, "rank 0 closed the connection during the rendezvous");
    }
    payload[w.bytes] = '\0';
    if (w.refused) {
        const cinfer_status status =
            CI_FAIL(CINFER_ERR_COMM, "rank 0 refused rank %d: %s", link->rank, payload);
        free(payload);
        return status;
    }
    *hello = payload;
    *hello_bytes = w.bytes;
    return CINFER_OK;
}

cinfer_status ci_tp_link_join(const char *address, int rank, int tp, double timeout_seconds,
                              ci_tp_link **out, void **hello, size_t *hello_bytes) {
    *out = NULL;
    *hello = NULL;
    *hello_bytes = 0;
    if (tp < 2 || rank < 1 || rank >= tp)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "rank %d cannot join a group of tp = %d: followers are ranks 1 to tp - 1",
                       rank, tp);
    ci_tp_link *link = NULL;
    CI_TRY(link_new(rank, tp, timeout_seconds, address, &link));
    const cinfer_status status = join(link, hello, hello_bytes);
    if (status != CINFER_OK) {
        ci_tp_link_free(link);
        ci_error_prefix("tensor-parallel rank %d joining %s: ", rank, address);
        return status;
    }
    *out = link;
    return CINFER_OK;
}

cinfer_status ci_tp_link_comm(ci_tp_link *link, ci_comm **out) {
    *out = NULL;
    if (link->rank == 0 && !link->accepted)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "ci_tp_link_comm before ci_tp_link_accept");
    for (int r = 0; r < link->tp; r++)
        if (link->collective[r] < 0 && (link->rank == 0 ? r > 0 : r == 0))
            return CI_FAIL(CINFER_ERR_ARGUMENT,
                           "ci_tp_link_comm: rank %d's link has no collective connection to rank "
                           "%d (a communicator was made already?)",
                           link->rank, r);
    const cinfer_status status =
        ci_comm_socket_create(link->rank, link->tp, link->collective, link->timeout_seconds, out);
    /* the communicator owns them now, whether it was made or not */
    for (int r = 0; r < link->tp; r++) link->collective[r] = -1;
    return status;
}

static cinfer_status send_message(int fd, int to, const void *msg, size_t bytes,
                                  double timeout_seconds) {
    if (bytes > CI_TP_LINK_MAX_MESSAGE_BYTES)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "a control message of %zu bytes; at most %zu", bytes,
                       CI_TP_LINK_MAX_MESSAGE_BYTES);
    char peer[64];
    peer_name(to, peer, sizeof peer);
    const message_header h = {MESSAGE_MAGIC, 0, bytes};
    CI_TRY(ci_socket_send(fd, &h, sizeof h, timeout_seconds, peer));
    return ci_socket_send(fd, msg, bytes, timeout_seconds, peer);
}

cinfer_status ci_tp_link_send_all(ci_tp_link *link, const void *msg, size_t bytes) {
    if (link->rank != 0)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "rank %d: only rank 0 sends to every rank", link->rank);
    for (int r = 1; r < link->tp; r++)
        CI_TRY(send_message(link->control[r], r, msg, bytes, link->timeout_seconds));
    return CINFER_OK;
}

cinfer_status ci_tp_link_send(ci_tp_link *link, const void *msg, size_t bytes) {
    if (link->rank == 0)
        return CI_FAIL(CINFER_ERR_ARGUMENT, "rank 0 sends with ci_tp_link_send_all");
    return send_message(link->control[0], 0, msg, bytes, link->timeout_seconds);
}

cinfer_status ci_tp_link_recv(ci_tp_link *link, int from, const void **msg, size_t *bytes,
                              double timeout_seconds) {
    *msg = NULL;
    *bytes = 0;
    if (link->rank != 0)
        from = 0;
    else if (from < 1 || from >= link->tp)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "rank 0 receives from ranks 1 to %d of tp = %d, not from rank %d",
                       link->tp - 1, link->tp, from);
    const int fd = link->control[from];
    char peer[64];
    peer_name(from, peer, sizeof peer);
    /* one deadline for the header and the bytes */
    const double deadline = ci_socket_deadline(timeout_seconds);
    message_header h;
    CI_TRY(ci_socket_recv(fd, &h, sizeof h, timeout_seconds, peer));
    if (h.magic != MESSAGE_MAGIC)
        return CI_FAIL(CINFER_ERR_COMM, "%s sent something that is not a control message", peer);
    if (h.bytes > CI_TP_LINK_MAX_MESSAGE_BYTES)
        return CI_FAIL(CINFER_ERR_COMM, "%s sent a control message of %llu bytes; at most %zu",
                       peer, (unsigned long long)h.bytes, CI_TP_LINK_MAX_MESSAGE_BYTES);
    inbox *box = &link->inboxes[from];
    if (h.bytes > box->capacity || !box->data) {
        void *grown = realloc(box->data, h.bytes ? h.bytes : 1);
        CI_CHECK_ALLOC(grown, h.bytes);
        box->data = grown;
        box->capacity = h.bytes;
    }
    const double left = timeout_seconds > 0 ? deadline - ci_now_seconds() : 0;
    if (timeout_seconds > 0 && left <= 0)
        return CI_FAIL(CINFER_ERR_COMM, "timed out after %.1f s receiving %llu bytes from %s",
                       timeout_seconds, (unsigned long long)h.bytes, peer);
    CI_TRY(ci_socket_recv(fd, box->data, h.bytes, left, peer));
    *msg = box->data;
    *bytes = h.bytes;
    return CINFER_OK;
}

int ci_tp_link_wait_closed(ci_tp_link *link, int wake_fd) {
    struct pollfd fds[CI_TP_LINK_MAX_WATCHED + 1];
    int ranks[CI_TP_LINK_MAX_WATCHED + 1], n = 0;
    for (int r = 0; r < link->tp && n < CI_TP_LINK_MAX_WATCHED; r++) {
        if (r == link->rank || link->control[r] < 0) continue;
        /* POLLRDHUP: the peer closed its end, whatever it left unread; nothing is read here */
        fds[n] = (struct pollfd){link->control[r], POLLRDHUP, 0};
        ranks[n++] = r;
    }
    fds[n] = (struct pollfd){wake_fd, POLLIN, 0};
    for (;;) {
        if (poll(fds, (nfds_t)(n + 1), -1) < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (fds[n].revents) return -1;
        for (int i = 0; i < n; i++)
            if (fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return ranks[i];
    }
}
