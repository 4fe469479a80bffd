/* Tensor-parallel ranks as processes: how they find each other, and what rank 0 tells them.
 *
 * Rank 0 listens at "host:port"; ranks 1 .. tp-1 connect to it (on this machine or another) and
 * each opens two connections: control, for the messages below (rank 0's requests, the followers'
 * replies), and collectives, for the socket communicator (kernels/comm.h, ci_comm_socket_create)
 * that ci_tp_link_comm makes. At the rendezvous rank 0 checks that each rank joined exactly once
 * with the same tp, then sends each the hello payload (an NCCL unique id, for instance).
 *
 * Every wait is bounded by the link's timeout, except a follower's wait for its next request
 * (ci_tp_link_recv with no timeout), which still fails at once when rank 0 goes away.
 * docs/TENSOR_PARALLEL.md, "Ranks as processes: the transport". */
#ifndef CINFER_TP_LINK_H
#define CINFER_TP_LINK_H

#include <stddef.h>

#include "../include/cinfer.h"
#include "../kernels/comm.h"

typedef struct ci_tp_link ci_tp_link;

/* The largest hello ci_tp_link_accept sends: an NCCL unique id is 128 bytes. */
enum { CI_TP_LINK_MAX_HELLO_BYTES = 4096 };
/* The largest control message either side accepts: a request is a few MB at most; a length past
 * this is a broken or hostile peer, refused before anything is allocated. */
#define CI_TP_LINK_MAX_MESSAGE_BYTES ((size_t)1 << 30)

/* Rank 0: listens on address (port 0: any free port) for tp - 1 followers. timeout_seconds bounds
 * the rendezvous and every later wait (the communicator's too); <= 0:
 * CI_COMM_DEFAULT_TIMEOUT_SECONDS. */
cinfer_status ci_tp_link_listen(const char *address, int tp, double timeout_seconds,
                                ci_tp_link **out);
/* The bound "host:port" (rank 0), for spawning workers; a follower: rank 0's address. */
const char *ci_tp_link_address(const ci_tp_link *link);
/* Rank 0: waits (at most the timeout) until ranks 1 .. tp-1 have each joined exactly once, then
 * sends each the hello (at most CI_TP_LINK_MAX_HELLO_BYTES). Fails, naming the rank, on a rank that
 * never joined, joined twice or with another tp, and on a connection that is not a cinfer rank;
 * the ranks that joined are told why. Once. */
cinfer_status ci_tp_link_accept(ci_tp_link *link, const void *hello, size_t hello_bytes);
/* Rank `rank` (1 .. tp-1): connects to rank 0 at address (retrying until the timeout: it may start
 * before rank 0 listens), says its rank and tp, and receives the hello (*hello malloc'd, the
 * caller frees it; never NULL on success). */
cinfer_status ci_tp_link_join(const char *address, int rank, int tp, double timeout_seconds,
                              ci_tp_link **out, void **hello, size_t *hello_bytes);
int ci_tp_link_rank(const ci_tp_link *link);
int ci_tp_link_size(const ci_tp_link *link);
/* The socket communicator over the link's collective connections, with the link's timeout; once
 * (the communicator takes the connections). */
cinfer_status ci_tp_link_comm(ci_tp_link *link, ci_comm **out);

/* Control messages, length-prefixed, at most CI_TP_LINK_MAX_MESSAGE_BYTES. */
/* Rank 0 -> every follower. */
cinfer_status ci_tp_link_send_all(ci_tp_link *link, const void *msg, size_t bytes);
/* A follower -> rank 0. */
cinfer_status ci_tp_link_send(ci_tp_link *link, const void *msg, size_t bytes);
/* Rank 0: the next message from follower `from`; a follower: the next from rank 0 (from ignored).
 * timeout <= 0: wait forever (a follower idle between requests), but a closed peer fails at once.
 * *msg is owned by the link, valid until the next recv from that peer. */
cinfer_status ci_tp_link_recv(ci_tp_link *link, int from, const void **msg, size_t *bytes,
                              double timeout_seconds);
/* Closes every connection (the peers read EOF). NULL is nothing. */
void ci_tp_link_free(ci_tp_link *link);

/* Blocks until a peer closes its control connection (its process ended: returns its rank) or
 * wake_fd becomes readable (returns -1), reading nothing: a watchdog's wait, beside a thread that
 * sends and receives on the link. Watches at most CI_TP_LINK_MAX_WATCHED peers. */
enum { CI_TP_LINK_MAX_WATCHED = 1024 };
int ci_tp_link_wait_closed(ci_tp_link *link, int wake_fd);

#endif
