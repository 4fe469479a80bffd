/* TCP between the processes of a tensor-parallel group (engine/tp_link.h,
 * kernels/cpu/comm_socket.c): listen, accept, connect, and sends and receives of whole buffers,
 * every one of them bounded by a deadline on the monotonic clock, so that a silent or dead peer is
 * an error, never a hang.
 *
 * Addresses are "host:port": an IPv4 address or a host name (resolved to IPv4 with getaddrinfo),
 * port 0 when listening means any free port. Connected sockets have TCP_NODELAY (the collectives
 * are small, latency-bound messages) and close on exec. Writes use MSG_NOSIGNAL: a closed peer is
 * an error (CINFER_ERR_COMM), not a SIGPIPE that kills the process. */
#ifndef CINFER_SOCKET_H
#define CINFER_SOCKET_H

#include <stddef.h>

#include "../include/cinfer.h"

/* Listens on address; port 0: any free port. bound (bound_bytes, e.g. 64) gets the "host:port"
 * actually bound, "127.0.0.1:41234". */
cinfer_status ci_socket_listen(const char *address, int backlog, int *fd_out, char *bound,
                               size_t bound_bytes);
/* The next connection on listen_fd, waiting at most timeout_seconds (<= 0: forever). */
cinfer_status ci_socket_accept(int listen_fd, double timeout_seconds, int *fd_out);
/* Connects to address, retrying while nobody listens there yet (the listener may start after us)
 * until timeout_seconds (<= 0: forever) have passed. */
cinfer_status ci_socket_connect(const char *address, double timeout_seconds, int *fd_out);
/* Sends / receives exactly bytes within timeout_seconds (<= 0: no limit). peer names the other end
 * in messages ("tensor-parallel rank 2"). A closed connection is CINFER_ERR_COMM "<peer> closed
 * the connection". */
cinfer_status ci_socket_send(int fd, const void *data, size_t bytes, double timeout_seconds,
                             const char *peer);
cinfer_status ci_socket_recv(int fd, void *data, size_t bytes, double timeout_seconds,
                             const char *peer);
/* "127.0.0.1:53412": the peer of a connected socket, for messages. */
void ci_socket_peer_name(int fd, char *out, size_t out_bytes);

/* ---- for callers that word their own errors and wait on more than one thing (the communicator) */

/* The moment timeout_seconds from now on ci_now_seconds()'s clock; <= 0: never (INFINITY). */
double ci_socket_deadline(double timeout_seconds);

typedef enum ci_socket_result {
    CI_SOCKET_DONE,      /* every byte moved */
    CI_SOCKET_CLOSED,    /* the peer closed the connection (EOF, EPIPE, ECONNRESET) */
    CI_SOCKET_TIMED_OUT, /* the deadline passed */
    CI_SOCKET_WOKEN,     /* wake_fd became readable (someone aborted) */
    CI_SOCKET_READABLE,  /* a send stopped because the peer sent something (watch_in) */
    CI_SOCKET_FAILED     /* another error: errno says which */
} ci_socket_result;

/* Exactly bytes, until the deadline (ci_socket_deadline) or until wake_fd (-1: none) is readable.
 */
ci_socket_result ci_socket_recv_until(int fd, void *data, size_t bytes, double deadline,
                                      int wake_fd);
/* The same for a send; with watch_in, it stops (CI_SOCKET_READABLE) as soon as fd has something
 * to read: a peer that stopped reading us to tell us why. *sent (NULL: not wanted) gets the bytes
 * that left, so that a caller knows whether a message was cut short. */
ci_socket_result ci_socket_send_until(int fd, const void *data, size_t bytes, double deadline,
                                      int wake_fd, int watch_in, size_t *sent);
/* Milliseconds for poll() until the deadline: -1 for none, 0 once passed. */
int ci_socket_poll_ms(double deadline);

#endif
