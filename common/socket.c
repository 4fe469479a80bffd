/* TCP with deadlines (socket.h). Every wait is a poll() against a deadline on the monotonic clock,
 * restarted after EINTR with what is left of it; sends and receives go through non-blocking calls
 * after poll says the socket is ready, so that no single call can block past the deadline. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* SOCK_CLOEXEC, SOCK_NONBLOCK, accept4 */
#endif
#include "socket.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "error.h"

/* How long a connect waits before it tries again while nobody listens yet: short against the
 * seconds a rank takes to start, long enough not to busy the listener's host. */
#define CONNECT_RETRY_SECONDS 0.05

enum { HOST_CAPACITY = 256, PORT_CAPACITY = 8 };

/* "host:port" into its parts; the port must be a number in [0, 65535]. */
static cinfer_status parse_address(const char *address, char *host, char *port) {
    const char *colon = address ? strrchr(address, ':') : NULL;
    if (!colon || colon == address)
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "address '%s': expected host:port, e.g. 127.0.0.1:29500 or node1:29500",
                       address ? address : "(null)");
    const size_t host_len = (size_t)(colon - address);
    const char *p = colon + 1;
    const size_t port_len = strlen(p);
    char *end = NULL;
    const long number = port_len ? strtol(p, &end, 10) : -1;
    if (host_len >= HOST_CAPACITY || port_len == 0 || port_len >= PORT_CAPACITY || *end != '\0' ||
        number < 0 || number > 65535 || p[0] == '+' || p[0] == '-')
        return CI_FAIL(CINFER_ERR_ARGUMENT,
                       "address '%s': expected host:port with a port from 0 to 65535, e.g. "
                       "127.0.0.1:29500",
                       address);
    memcpy(host, address, host_len);
    host[host_len] = '\0';
    memcpy(port, p, port_len + 1);
    return CINFER_OK;
}

static cinfer_status resolve(const char *address, int passive, struct addrinfo **out) {
    char host[HOST_CAPACITY], port[PORT_CAPACITY];
    CI_TRY(parse_address(address, host, port));
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_INET; /* "localhost" is 127.0.0.1, whatever order the resolver likes */
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = passive ? AI_PASSIVE : 0;
    const int rc = getaddrinfo(host, port, &hints, out);
    if (rc != 0)
        return CI_FAIL(CINFER_ERR_COMM, "address '%s': cannot resolve host '%s': %s", address, host,
                       gai_strerror(rc));
    return CINFER_OK;
}

static void name_of(const struct sockaddr *sa, socklen_t len, char *out, size_t out_bytes) {
    char host[NI_MAXHOST], port[NI_MAXSERV];
    if (getnameinfo(sa, len, host, sizeof host, port, sizeof port,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(out, out_bytes, "(unknown address)");
        return;
    }
    snprintf(out, out_bytes, "%s:%s", host, port);
}

void ci_socket_peer_name(int fd, char *out, size_t out_bytes) {
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    if (getpeername(fd, (struct sockaddr *)&sa, &len) != 0) {
        snprintf(out, out_bytes, "(unknown peer)");
        return;
    }
    name_of((struct sockaddr *)&sa, len, out, out_bytes);
}

/* Blocking from here on (waits are polls), no Nagle delay: every message is sent whole. */
static void set_connected_options(int fd) {
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const int flags = fcntl(fd, F_GETFL);
    if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
}

double ci_socket_deadline(double timeout_seconds) {
    return timeout_seconds > 0 ? ci_now_seconds() + timeout_seconds : INFINITY;
}

int ci_socket_poll_ms(double deadline) {
    if (isinf(deadline)) return -1;
    const double left = deadline - ci_now_seconds();
    if (left <= 0) return 0;
    /* rounded up: a poll that returns a hair early would only loop once more */
    return left > 86400.0 ? 86400000 : (int)ceil(left * 1000.0);
}

/* Waits for events on fd, or wake_fd readable, or the deadline. */
static ci_socket_result wait_for(int fd, short events, int wake_fd, double deadline,
                                 short *revents) {
    for (;;) {
        struct pollfd p[2] = {{fd, events, 0}, {wake_fd, POLLIN, 0}};
        const int n = poll(p, wake_fd >= 0 ? 2 : 1, ci_socket_poll_ms(deadline));
        if (n < 0) {
            if (errno == EINTR) continue;
            return CI_SOCKET_FAILED;
        }
        if (wake_fd >= 0 && p[1].revents) return CI_SOCKET_WOKEN;
        if (n > 0 && p[0].revents) {
            *revents = p[0].revents;
            return CI_SOCKET_DONE;
        }
        if (ci_now_seconds() >= deadline) return CI_SOCKET_TIMED_OUT;
    }
}

ci_socket_result ci_socket_recv_until(int fd, void *data, size_t bytes, double deadline,
                                      int wake_fd) {
    size_t got = 0;
    while (got < bytes) {
        short revents = 0;
        const ci_socket_result waited = wait_for(fd, POLLIN, wake_fd, deadline, &revents);
        if (waited != CI_SOCKET_DONE) return waited;
        const ssize_t n = recv(fd, (char *)data + got, bytes - got, MSG_DONTWAIT);
        if (n > 0) {
            got += (size_t)n;
        } else if (n == 0) {
            return CI_SOCKET_CLOSED;
        } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
            return errno == ECONNRESET ? CI_SOCKET_CLOSED : CI_SOCKET_FAILED;
        }
    }
    return CI_SOCKET_DONE;
}

ci_socket_result ci_socket_send_until(int fd, const void *data, size_t bytes, double deadline,
                                      int wake_fd, int watch_in, size_t *sent) {
    size_t done = 0;
    ci_socket_result r = CI_SOCKET_DONE;
    while (done < bytes) {
        short revents = 0;
        r = wait_for(fd, (short)(POLLOUT | (watch_in ? POLLIN : 0)), wake_fd, deadline, &revents);
        if (r != CI_SOCKET_DONE) break;
        if (watch_in && (revents & POLLIN)) {
            r = CI_SOCKET_READABLE;
            break;
        }
        const ssize_t n =
            send(fd, (const char *)data + done, bytes - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0) {
            done += (size_t)n;
        } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
            r = errno == EPIPE || errno == ECONNRESET ? CI_SOCKET_CLOSED : CI_SOCKET_FAILED;
            break;
        }
    }
    if (sent) *sent = done;
    return r;
}

/* The message for a send or receive that did not finish. */
static cinfer_status io_failed(ci_socket_result r, const char *what, size_t bytes,
                               double timeout_seconds, const char *peer) {
    switch (r) {
    case CI_SOCKET_CLOSED: return CI_FAIL(CINFER_ERR_COMM, "%s closed the connection", peer);
    case CI_SOCKET_TIMED_OUT:
        return CI_FAIL(CINFER_ERR_COMM, "timed out after %.1f s %s %zu bytes %s %s",
                       timeout_seconds, what, bytes, what[0] == 's' ? "to" : "from", peer);
    default:
        return CI_FAIL(CINFER_ERR_COMM, "%s %zu bytes %s %s: %s", what, bytes,
                       what[0] == 's' ? "to" : "from", peer, strerror(errno));
    }
}

cinfer_status ci_socket_send(int fd, const void *data, size_t bytes, double timeout_seconds,
                             const char *peer) {
    const ci_socket_result r =
        ci_socket_send_until(fd, data, bytes, ci_socket_deadline(timeout_seconds), -1, 0, NULL);
    return r == CI_SOCKET_DONE ? CINFER_OK : io_failed(r, "sending", bytes, timeout_seconds, peer);
}

cinfer_status ci_socket_recv(int fd, void *data, size_t bytes, double timeout_seconds,
                             const char *peer) {
    const ci_socket_result r =
        ci_socket_recv_until(fd, data, bytes, ci_socket_deadline(timeout_seconds), -1);
    return r == CI_SOCKET_DONE ? CINFER_OK
                               : io_failed(r, "receiving", bytes, timeout_seconds, peer);
}

cinfer_status ci_socket_listen(const char *address, int backlog, int *fd_out, char *bound,
                               size_t bound_bytes) {
    *fd_out = -1;
    struct addrinfo *list = NULL;
    CI_TRY(resolve(address, 1, &list));
    int fd = -1, error = 0;
    for (struct addrinfo *a = list; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            error = errno;
            continue;
        }
        /* a rank restarted at once reuses its port, whatever TIME_WAIT still holds */
        const int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, backlog) != 0) {
            error = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(list);
    if (fd < 0)
        return CI_FAIL(CINFER_ERR_COMM, "cannot listen on %s: %s", address, strerror(error));
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    if (bound && bound_bytes) {
        if (getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
            name_of((struct sockaddr *)&sa, len, bound, bound_bytes);
        else
            snprintf(bound, bound_bytes, "%s", address);
    }
    *fd_out = fd;
    return CINFER_OK;
}

cinfer_status ci_socket_accept(int listen_fd, double timeout_seconds, int *fd_out) {
    *fd_out = -1;
    const double deadline = ci_socket_deadline(timeout_seconds);
    for (;;) {
        short revents = 0;
        const ci_socket_result r = wait_for(listen_fd, POLLIN, -1, deadline, &revents);
        if (r == CI_SOCKET_TIMED_OUT)
            return CI_FAIL(CINFER_ERR_COMM, "nobody connected within %.1f s", timeout_seconds);
        if (r != CI_SOCKET_DONE)
            return CI_FAIL(CINFER_ERR_COMM, "waiting for a connection: %s", strerror(errno));
        const int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0) {
            set_connected_options(fd);
            *fd_out = fd;
            return CINFER_OK;
        }
        /* the connection went away before we took it, or a signal: wait for the next */
        if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED)
            return CI_FAIL(CINFER_ERR_COMM, "accepting a connection: %s", strerror(errno));
    }
}

/* One non-blocking connect to a, until the deadline: 0 and *fd_out, or the errno. */
static int connect_once(const struct addrinfo *a, double deadline, int *fd_out) {
    const int fd =
        socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) return errno;
    int error = 0;
    if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
        error = errno;
        if (error == EINPROGRESS || error == EINTR) {
            short revents = 0;
            const ci_socket_result r = wait_for(fd, POLLOUT, -1, deadline, &revents);
            socklen_t len = sizeof error;
            if (r == CI_SOCKET_TIMED_OUT)
                error = ETIMEDOUT;
            else if (r != CI_SOCKET_DONE || getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len))
                error = errno;
        }
    }
    if (error) {
        close(fd);
        return error;
    }
    set_connected_options(fd);
    *fd_out = fd;
    return 0;
}

cinfer_status ci_socket_connect(const char *address, double timeout_seconds, int *fd_out) {
    *fd_out = -1;
    const double deadline = ci_socket_deadline(timeout_seconds);
    int error = 0;
    for (;;) {
        /* resolved again each time: a host name may only start to resolve once its node is up */
        struct addrinfo *list = NULL;
        cinfer_status status = resolve(address, 0, &list);
        if (status == CINFER_OK) {
            for (struct addrinfo *a = list; a; a = a->ai_next) {
                error = connect_once(a, deadline, fd_out);
                if (!error) break;
            }
            freeaddrinfo(list);
            if (!error) return CINFER_OK;
        } else if (status == CINFER_ERR_ARGUMENT) {
            return status; /* not host:port: waiting will not mend it */
        }
        /* refused, unreachable or not resolved yet: the listener may not be up; other errors will
         * not get better by waiting */
        const int retry = status != CINFER_OK || error == ECONNREFUSED || error == ENETUNREACH ||
                          error == EHOSTUNREACH || error == ETIMEDOUT || error == ECONNRESET;
        const double now = ci_now_seconds();
        if (!retry || now + CONNECT_RETRY_SECONDS > deadline) {
            if (status != CINFER_OK) return status;
            return CI_FAIL(CINFER_ERR_COMM, "cannot connect to %s within %.1f s: %s", address,
                           timeout_seconds, strerror(error));
        }
        const struct timespec pause = {0, (long)(CONNECT_RETRY_SECONDS * 1e9)};
        nanosleep(&pause, NULL);
    }
}
