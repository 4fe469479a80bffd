/* The follower ranks of a tensor-parallel model (docs/TENSOR_PARALLEL.md, "Rank 0 and its
 * followers"): how rank 0 has ranks 1 .. tp-1 do what it does, whether they are threads of this
 * process (the CPU communicator) or processes of their own (one per GPU, possibly on other
 * machines).
 *
 * One mechanism for both. Rank 0 owns the scheduler, the sessions' state and the sampling; every
 * call that runs the model (a session's forward pass or greedy step, an engine's step) and every
 * object the followers must mirror (a session, an engine) is a message: rank 0 builds it, hands
 * it to every follower, runs its own part, and collects each follower's reply. A follower
 * executes messages in the order they come (ci_tp_follower_execute), keeping its sessions and
 * engines in a table by the id rank 0 gave them. With threads the message is read where rank 0
 * wrote it; with processes it crosses a socket (engine/tp_link.h) and a follower process runs
 * ci_tp_follow until rank 0 says stop. Either way a follower reads only the message, never rank
 * 0's memory: what a process needs is what a thread gets.
 *
 * A model's calls take turns: begin takes the model's step lock, end releases it (the group's
 * collectives must come in one order on every rank). */
#ifndef CINFER_TP_RANKS_H
#define CINFER_TP_RANKS_H

#include <stddef.h>
#include <stdint.h>

#include "../include/cinfer.h"
#include "../kernels/comm.h"

typedef enum ci_tp_op {
    CI_TP_SESSION_CREATE = 1, /* n_ctx, n_seqs */
    CI_TP_SESSION_FREE,
    CI_TP_SESSION_FORWARD, /* n_past, which, n_tokens, tokens [n_seqs · n_tokens] */
    CI_TP_SESSION_GREEDY,  /* n_past, tokens [n_seqs] */
    CI_TP_ENGINE_CREATE,   /* cinfer_engine_options (n_kv_blocks set); replies its KV bytes */
    CI_TP_ENGINE_FREE,
    CI_TP_ENGINE_STEP, /* the step's shape and host arrays (engine.c) */
    CI_TP_STOP         /* a follower process ends (ci_tp_follow returns) */
} ci_tp_op;

/* A message: the op, the id of the session or engine it is for, then fields, each padded to 8
 * bytes so that arrays read in place are aligned. Built on the host, grown as needed. */
typedef struct ci_tp_message {
    unsigned char *data;
    size_t bytes, capacity;
    int out_of_memory;
} ci_tp_message;

typedef struct ci_tp_header {
    uint32_t op, id;
} ci_tp_header;

void ci_tp_message_start(ci_tp_message *m, ci_tp_op op, uint32_t id);
void ci_tp_message_put(ci_tp_message *m, const void *data, size_t bytes);
void ci_tp_message_free(ci_tp_message *m);

/* Reads a message's fields in the order they were put; NULL (and the reader failed) when the
 * message is shorter than what is asked, which a follower reports rather than reads past. */
typedef struct ci_tp_reader {
    const unsigned char *at, *end;
    int failed;
} ci_tp_reader;

const void *ci_tp_take(ci_tp_reader *r, size_t bytes);

/* ---- rank 0 -------------------------------------------------------------------------------- */
typedef struct ci_tp_ranks ci_tp_ranks;

/* Followers as threads of this process: models[1 .. tp-1] (taken, with comms and group, which
 * rank 0's model shares: comms[0] is its communicator). */
cinfer_status ci_tp_ranks_threads(int tp, cinfer_model **models, ci_comm **comms,
                                  ci_comm_group *group, ci_tp_ranks **out);

typedef struct ci_tp_link ci_tp_link;
/* Followers as processes joined through link (taken), each having loaded its shard; comm is rank
 * 0's communicator (taken), used to abort the group when rank 0 fails mid-call. */
cinfer_status ci_tp_ranks_processes(ci_tp_link *link, ci_comm *comm, double timeout_seconds,
                                    ci_tp_ranks **out);

/* An id for a new session or engine: unique among the model's. */
uint32_t ci_tp_ranks_new_id(ci_tp_ranks *ranks);

/* Hands message m to every follower (which starts on it) and takes the model's step lock; rank 0
 * then runs its own part and calls end. A failure (a follower process is gone) releases the lock
 * and nothing ran. */
cinfer_status ci_tp_ranks_begin(ci_tp_ranks *ranks, const ci_tp_message *m);
/* Waits for every follower's reply and releases the lock. leader is rank 0's status: when it
 * failed, the group is aborted first so that no follower waits for rank 0 in a collective. Returns
 * leader, else the first follower's failure ("tensor-parallel rank 2: ..."), else CINFER_OK;
 * *values (may be NULL) the sum of the followers' replied values (an engine's KV bytes). */
cinfer_status ci_tp_ranks_end(ci_tp_ranks *ranks, cinfer_status leader, int64_t *values);

/* begin, then end at once: a message rank 0 has no part of its own in (a create, a free). */
cinfer_status ci_tp_ranks_call(ci_tp_ranks *ranks, const ci_tp_message *m, int64_t *values);
/* A message of op and id alone, its errors dropped: the followers free their copy of session or
 * engine id (CI_TP_SESSION_FREE, CI_TP_ENGINE_FREE; those that made none, or are gone, have
 * nothing to free), or end (CI_TP_STOP). */
void ci_tp_ranks_free_object(ci_tp_ranks *ranks, ci_tp_op op, uint32_t id);

/* The followers' side of a threads group, without its ranks object: models[1 .. tp-1], every
 * communicator and the group (what ci_tp_ranks_threads takes, for a load that failed before). */
void ci_tp_threads_free(int tp, cinfer_model **models, ci_comm **comms, ci_comm_group *group);

/* Ends the followers (threads joined; processes told to stop and their link closed) and frees
 * what the ranks hold: their models, the communicators, the group. After rank 0's model is freed:
 * its forward pass used comms[0]. NULL is nothing. */
void ci_tp_ranks_free(ci_tp_ranks *ranks);

/* ---- a follower ---------------------------------------------------------------------------- */
typedef struct ci_tp_follower ci_tp_follower;

ci_tp_follower *ci_tp_follower_create(cinfer_model *model);
/* Executes one message from rank 0; *value is what the reply carries (an engine's KV bytes). A
 * failure aborts the model's communicator, so that no rank waits for this one. */
cinfer_status ci_tp_follower_execute(ci_tp_follower *f, const void *message, size_t bytes,
                                     int64_t *value);
/* Frees the sessions and engines rank 0 left (it frees them first; this is for a rank 0 that
 * went away), not the model. */
void ci_tp_follower_free(ci_tp_follower *f);

/* A follower process's life after its load: executes what rank 0 sends over link, replying to
 * each, until CI_TP_STOP (CINFER_OK) or rank 0 goes away (an error saying so). */
cinfer_status ci_tp_follow(ci_tp_link *link, cinfer_model *model);

/* What a follower replies to each message. */
enum { CI_TP_REPLY_MESSAGE_BYTES = 1024 };
typedef struct ci_tp_reply {
    int32_t status;
    int32_t unused;
    int64_t value;
    char message[CI_TP_REPLY_MESSAGE_BYTES];
} ci_tp_reply;

#endif
