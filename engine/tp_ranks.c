/* Rank 0 and its followers (tp_ranks.h): messages, the two ways they reach a follower (a thread of
 * the rank pool reading rank 0's buffer, or a socket to a follower process), and what a follower
 * does with them. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/error.h"
#include "../models/model.h"
#include "engine.h"
#include "rank_pool.h"
#include "session.h"
#include "tp_link.h"
#include "tp_ranks.h"

/* ---- messages ------------------------------------------------------------------------------- */

static size_t padded8(size_t bytes) { return (bytes + 7) & ~(size_t)7; }

static void put_raw(ci_tp_message *m, const void *data, size_t bytes) {
    const size_t need = m->bytes + padded8(bytes);
    if (m->out_of_memory) return;
    if (need > m->capacity) {
        size_t capacity = m->capacity ? m->capacity : 256;
        while (capacity < need) capacity *= 2;
        unsigned char *grown = realloc(m->data, capacity);
        if (!grown) {
            m->out_of_memory = 1;
            return;
        }
        m->data = grown;
        m->capacity = capacity;
    }
    if (bytes) memcpy(m->data + m->bytes, data, bytes);
    memset(m->data + m->bytes + bytes, 0, padded8(bytes) - bytes);
    m->bytes = need;
}

void ci_tp_message_start(ci_tp_message *m, ci_tp_op op, uint32_t id) {
    m->bytes = 0;
    m->out_of_memory = 0;
    const ci_tp_header header = {(uint32_t)op, id};
    put_raw(m, &header, sizeof header);
}

void ci_tp_message_put(ci_tp_message *m, const void *data, size_t bytes) {
    put_raw(m, data, bytes);
}

void ci_tp_message_free(ci_tp_message *m) {
    free(m->data);
    *m = (ci_tp_message){0};
}

const void *ci_tp_take(ci_tp_reader *r, size_t bytes) {
    if (r->failed || (size_t)(r->end - r->at) < padded8(bytes)) {
        r->failed = 1;
        return NULL;
    }
    const void *at = r->at;
    r->at += padded8(bytes);
    return at;
}

/* ---- a follower ----------------------------------------------------------------------------- */

/* A session or an engine rank 0 created on this rank, by rank 0's id. */
typedef struct mirrored {
    uint32_t id;
    cinfer_session *session;
    cinfer_engine *engine;
} mirrored;

struct ci_tp_follower {
    cinfer_model *model;
    mirrored *objects;
    int n_objects, capacity;
};

ci_tp_follower *ci_tp_follower_create(cinfer_model *model) {
    ci_tp_follower *f = calloc(1, sizeof *f);
    if (f) f->model = model;
    return f;
}

static mirrored *find_object(ci_tp_follower *f, uint32_t id) {
    for (int i = 0; i < f->n_objects; i++)
        if (f->objects[i].id == id) return &f->objects[i];
    return NULL;
}

static cinfer_status add_object(ci_tp_follower *f, mirrored object) {
    if (f->n_objects == f->capacity) {
        const int capacity = f->capacity ? 2 * f->capacity : 8;
        mirrored *grown = realloc(f->objects, (size_t)capacity * sizeof *grown);
        CI_CHECK_ALLOC(grown, (size_t)capacity * sizeof *grown);
        f->objects = grown;
        f->capacity = capacity;
    }
    f->objects[f->n_objects++] = object;
    return CINFER_OK;
}

static void free_object(ci_tp_follower *f, mirrored *object) {
    cinfer_session_free(object->session);
    cinfer_engine_free(object->engine);
    *object = f->objects[--f->n_objects];
}

void ci_tp_follower_free(ci_tp_follower *f) {
    if (!f) return;
    while (f->n_objects > 0) free_object(f, &f->objects[f->n_objects - 1]);
    free(f->objects);
    free(f);
}

static cinfer_status create_object(ci_tp_follower *f, ci_tp_op op, uint32_t id, ci_tp_reader *r,
                                   int64_t *value) {
    if (find_object(f, id))
        return CI_FAIL(CINFER_ERR_COMM, "rank 0 created object %u twice", (unsigned)id);
    mirrored object = {id, NULL, NULL};
    if (op == CI_TP_SESSION_CREATE) {
        const int32_t *shape = ci_tp_take(r, 2 * sizeof(int32_t)); /* n_ctx, n_seqs */
        if (!shape) return CI_FAIL(CINFER_ERR_COMM, "a session message is truncated");
        CI_TRY(ci_session_create_follower(f->model, shape[0], shape[1], &object.session));
    } else {
        const cinfer_engine_options *options = ci_tp_take(r, sizeof *options);
        if (!options) return CI_FAIL(CINFER_ERR_COMM, "an engine message is truncated");
        CI_TRY(cinfer_engine_create(f->model, options, &object.engine));
        *value = ci_engine_kv_bytes(object.engine);
    }
    const cinfer_status status = add_object(f, object);
    if (status != CINFER_OK) {
        cinfer_session_free(object.session);
        cinfer_engine_free(object.engine);
    }
    return status;
}

static cinfer_status execute(ci_tp_follower *f, const void *message, size_t bytes, int64_t *value) {
    ci_tp_reader r = {message, (const unsigned char *)message + bytes, 0};
    const ci_tp_header *header = ci_tp_take(&r, sizeof *header);
    if (!header) return CI_FAIL(CINFER_ERR_COMM, "an empty message from rank 0");
    const ci_tp_op op = (ci_tp_op)header->op;
    if (op == CI_TP_SESSION_CREATE || op == CI_TP_ENGINE_CREATE)
        return create_object(f, op, header->id, &r, value);
    mirrored *object = find_object(f, header->id);
    if (op == CI_TP_SESSION_FREE || op == CI_TP_ENGINE_FREE) {
        /* an object whose creation failed on some rank is freed on all: absent here is fine */
        if (object) free_object(f, object);
        return CINFER_OK;
    }
    if (!object)
        return CI_FAIL(CINFER_ERR_COMM,
                       "rank 0 sent op %u for object %u, which this rank does "
                       "not hold",
                       (unsigned)op, (unsigned)header->id);
    if ((op == CI_TP_SESSION_FORWARD || op == CI_TP_SESSION_GREEDY) && object->session)
        return ci_session_follow(object->session, op, &r);
    if (op == CI_TP_ENGINE_STEP && object->engine) return ci_engine_follow_step(object->engine, &r);
    return CI_FAIL(CINFER_ERR_COMM,
                   "rank 0 sent op %u, which this rank does not know for "
                   "object %u",
                   (unsigned)op, (unsigned)header->id);
}

cinfer_status ci_tp_follower_execute(ci_tp_follower *f, const void *message, size_t bytes,
                                     int64_t *value) {
    *value = 0;
    ci_error_clear();
    const cinfer_status status = execute(f, message, bytes, value);
    if (status != CINFER_OK) ci_comm_abort(f->model->comm, cinfer_last_error());
    return status;
}

/* ---- the watchdog of a process rank ---------------------------------------------------------
 * NCCL's collectives are queued on the GPU and never return an error when a peer died: the host
 * blocks in its next copy until the kernel ends, which it never does. So beside every process rank
 * a thread waits for a peer's control connection to close (its process ended) and aborts the
 * rank's communicator (ncclCommAbort), which makes the pending collectives return; the call then
 * fails with the reason. The socket communicator notices a closed peer by itself; the abort only
 * makes it sooner. */
typedef struct watchdog {
    pthread_t thread;
    int wake[2]; /* written to stop the thread */
    ci_tp_link *link;
    ci_comm *comm;
    int started;
} watchdog;

static void *watch(void *arg) {
    watchdog *w = arg;
    const int rank = ci_tp_link_wait_closed(w->link, w->wake[0]);
    if (rank >= 0) {
        char reason[160];
        snprintf(reason, sizeof reason,
                 "tensor-parallel rank %d closed its connection (its process ended)", rank);
        ci_comm_abort(w->comm, reason);
    }
    return NULL;
}

static void watchdog_start(watchdog *w, ci_tp_link *link, ci_comm *comm) {
    *w = (watchdog){.link = link, .comm = comm, .wake = {-1, -1}};
    /* without a watchdog a dead peer is still an error on the CPU, and a hang on NCCL */
    if (pipe(w->wake) != 0) return;
    w->started = pthread_create(&w->thread, NULL, watch, w) == 0;
}

static void watchdog_stop(watchdog *w) {
    if (w->started) {
        const char stop = 1;
        if (write(w->wake[1], &stop, 1) != 1) { /* the thread stays blocked: detach it */
            pthread_detach(w->thread);
        } else {
            pthread_join(w->thread, NULL);
        }
    }
    if (w->wake[0] >= 0) close(w->wake[0]);
    if (w->wake[1] >= 0) close(w->wake[1]);
    *w = (watchdog){.wake = {-1, -1}};
}

/* ---- rank 0: followers as threads or processes ---------------------------------------------- */

struct ci_tp_ranks {
    int tp;
    pthread_mutex_t step_lock; /* held from begin to end */
    uint32_t next_id;
    ci_comm *leader_comm; /* rank 0's: aborted when rank 0 fails mid-call */
    double timeout_seconds;

    /* threads: follower r's model and state; the pool runs the current message on each */
    cinfer_model **models; /* [tp], [0] unused */
    ci_comm **comms;       /* [tp] */
    ci_comm_group *group;
    ci_tp_follower **followers; /* [tp], [0] unused */
    ci_rank_pool *pool;
    const ci_tp_message *current;
    ci_tp_reply *replies; /* [tp] */

    /* processes */
    ci_tp_link *link;
    watchdog watch;
    char gone[CI_TP_REPLY_MESSAGE_BYTES]; /* set once a follower process failed to answer */
};

static cinfer_status ranks_alloc(int tp, ci_comm *leader_comm, ci_tp_ranks **out) {
    ci_tp_ranks *t = calloc(1, sizeof *t);
    CI_CHECK_ALLOC(t, sizeof *t);
    t->tp = tp;
    t->next_id = 1;
    t->leader_comm = leader_comm;
    t->timeout_seconds = CI_COMM_DEFAULT_TIMEOUT_SECONDS;
    pthread_mutex_init(&t->step_lock, NULL);
    t->replies = calloc((size_t)tp, sizeof *t->replies);
    if (!t->replies) {
        ci_tp_ranks_free(t);
        return CI_FAIL(CINFER_ERR_MEMORY, "out of memory");
    }
    *out = t;
    return CINFER_OK;
}

static void follow_in_thread(void *arg, int rank) {
    ci_tp_ranks *t = arg;
    ci_tp_reply *reply = &t->replies[rank];
    reply->status = ci_tp_follower_execute(t->followers[rank], t->current->data, t->current->bytes,
                                           &reply->value);
    if (reply->status != CINFER_OK)
        snprintf(reply->message, sizeof reply->message, "%s", cinfer_last_error());
}

cinfer_status ci_tp_ranks_threads(int tp, cinfer_model **models, ci_comm **comms,
                                  ci_comm_group *group, ci_tp_ranks **out) {
    *out = NULL;
    ci_tp_ranks *t = NULL;
    const cinfer_status allocated = ranks_alloc(tp, comms[0], &t);
    if (allocated != CINFER_OK) {
        ci_tp_threads_free(tp, models, comms, group);
        return allocated;
    }
    t->models = models;
    t->comms = comms;
    t->group = group;
    t->followers = calloc((size_t)tp, sizeof *t->followers);
    cinfer_status status = t->followers ? CINFER_OK : CI_FAIL(CINFER_ERR_MEMORY, "out of memory");
    for (int r = 1; status == CINFER_OK && r < tp; r++)
        if (!(t->followers[r] = ci_tp_follower_create(models[r])))
            status = CI_FAIL(CINFER_ERR_MEMORY, "out of memory");
    if (status == CINFER_OK && !(t->pool = ci_rank_pool_create(tp)))
        status = CI_FAIL(CINFER_ERR_MEMORY,
                         "could not start the threads of %d tensor-parallel ranks", tp - 1);
    if (status != CINFER_OK) {
        ci_tp_ranks_free(t);
        return status;
    }
    *out = t;
    return CINFER_OK;
}

cinfer_status ci_tp_ranks_processes(ci_tp_link *link, ci_comm *comm, double timeout_seconds,
                                    ci_tp_ranks **out) {
    *out = NULL;
    ci_tp_ranks *t = NULL;
    const cinfer_status status = ranks_alloc(ci_tp_link_size(link), comm, &t);
    if (status != CINFER_OK) {
        ci_tp_link_free(link);
        ci_comm_destroy(comm);
        return status;
    }
    t->link = link;
    if (timeout_seconds > 0) t->timeout_seconds = timeout_seconds;
    watchdog_start(&t->watch, link, comm);
    *out = t;
    return CINFER_OK;
}

uint32_t ci_tp_ranks_new_id(ci_tp_ranks *t) {
    pthread_mutex_lock(&t->step_lock);
    const uint32_t id = t->next_id++;
    pthread_mutex_unlock(&t->step_lock);
    return id;
}

cinfer_status ci_tp_ranks_begin(ci_tp_ranks *t, const ci_tp_message *m) {
    if (m->out_of_memory) return CI_FAIL(CINFER_ERR_MEMORY, "out of memory for a rank message");
    pthread_mutex_lock(&t->step_lock);
    for (int r = 0; r < t->tp; r++) t->replies[r] = (ci_tp_reply){0};
    if (t->pool) {
        t->current = m;
        ci_rank_pool_start(t->pool, follow_in_thread, t);
        return CINFER_OK;
    }
    cinfer_status status = t->gone[0] ? CI_FAIL(CINFER_ERR_COMM, "%s", t->gone)
                                      : ci_tp_link_send_all(t->link, m->data, m->bytes);
    if (status != CINFER_OK) {
        if (!t->gone[0]) snprintf(t->gone, sizeof t->gone, "%s", cinfer_last_error());
        pthread_mutex_unlock(&t->step_lock);
    }
    return status;
}

/* A follower process's reply to the current message, or why none came. */
static void receive_reply(ci_tp_ranks *t, int rank) {
    ci_tp_reply *reply = &t->replies[rank];
    const void *data = NULL;
    size_t bytes = 0;
    cinfer_status status = t->gone[0]
                               ? CI_FAIL(CINFER_ERR_COMM, "%s", t->gone)
                               : ci_tp_link_recv(t->link, rank, &data, &bytes, t->timeout_seconds);
    if (status == CINFER_OK && bytes != sizeof *reply)
        status =
            CI_FAIL(CINFER_ERR_COMM, "a reply of %zu bytes, expected %zu", bytes, sizeof *reply);
    if (status == CINFER_OK) {
        memcpy(reply, data, sizeof *reply);
        reply->message[sizeof reply->message - 1] = '\0';
        return;
    }
    /* no answer: the process is gone or stuck; nothing more is sent to any of them */
    reply->status = status;
    snprintf(reply->message, sizeof reply->message, "%s", cinfer_last_error());
    if (!t->gone[0])
        snprintf(t->gone, sizeof t->gone, "tensor-parallel rank %d did not answer: %.900s", rank,
                 reply->message);
}

cinfer_status ci_tp_ranks_end(ci_tp_ranks *t, cinfer_status leader, int64_t *values) {
    char leader_message[CI_TP_REPLY_MESSAGE_BYTES] = "";
    if (leader != CINFER_OK) {
        snprintf(leader_message, sizeof leader_message, "%s", cinfer_last_error());
        ci_comm_abort(t->leader_comm, leader_message);
    }
    if (t->pool)
        ci_rank_pool_wait(t->pool);
    else
        for (int r = 1; r < t->tp; r++) receive_reply(t, r);
    int64_t sum = 0;
    cinfer_status status = leader;
    int failed = 0;
    for (int r = 1; r < t->tp; r++) {
        sum += t->replies[r].value;
        if (t->replies[r].status != CINFER_OK && !failed) failed = r;
    }
    pthread_mutex_unlock(&t->step_lock);
    if (values) *values = sum;
    if (leader != CINFER_OK) return CI_FAIL(leader, "%s", leader_message);
    if (failed)
        status = CI_FAIL((cinfer_status)t->replies[failed].status, "tensor-parallel rank %d: %s",
                         failed, t->replies[failed].message);
    return status;
}

/* The followers' threads, their state and models, the communicators and the group. */
void ci_tp_threads_free(int tp, cinfer_model **models, ci_comm **comms, ci_comm_group *group) {
    for (int r = 1; models && r < tp; r++) cinfer_model_free(models[r]);
    for (int r = 0; comms && r < tp; r++) ci_comm_destroy(comms[r]);
    ci_comm_group_free(group);
    free(models);
    free(comms);
}

cinfer_status ci_tp_ranks_call(ci_tp_ranks *t, const ci_tp_message *m, int64_t *values) {
    CI_TRY(ci_tp_ranks_begin(t, m));
    return ci_tp_ranks_end(t, CINFER_OK, values);
}

void ci_tp_ranks_free_object(ci_tp_ranks *t, ci_tp_op op, uint32_t id) {
    ci_tp_message m = {0};
    ci_tp_message_start(&m, op, id);
    (void)ci_tp_ranks_call(t, &m, NULL);
    ci_tp_message_free(&m);
}

void ci_tp_ranks_free(ci_tp_ranks *t) {
    if (!t) return;
    if (t->link) {
        watchdog_stop(&t->watch); /* the workers close their connections after STOP */
        /* a follower process ends on STOP; one that is gone or stuck is not waited for long */
        t->timeout_seconds = 10.0;
        ci_tp_ranks_free_object(t, CI_TP_STOP, 0);
        ci_error_clear();
        ci_tp_link_free(t->link);
        ci_comm_destroy(t->leader_comm);
    }
    ci_rank_pool_free(t->pool); /* no message runs between calls: the threads are idle */
    for (int r = 1; t->followers && r < t->tp; r++) ci_tp_follower_free(t->followers[r]);
    free(t->followers);
    ci_tp_threads_free(t->tp, t->models, t->comms, t->group);
    free(t->replies);
    pthread_mutex_destroy(&t->step_lock);
    free(t);
}

/* ---- a follower process --------------------------------------------------------------------- */

cinfer_status ci_tp_follow(ci_tp_link *link, cinfer_model *model) {
    ci_tp_follower *f = ci_tp_follower_create(model);
    CI_CHECK_ALLOC(f, sizeof(ci_tp_follower *));
    watchdog watch;
    watchdog_start(&watch, link, model->comm); /* rank 0 gone mid-call: this rank's call fails */
    cinfer_status status = CINFER_OK;
    for (;;) {
        const void *data = NULL;
        size_t bytes = 0;
        /* idle between requests for as long as rank 0 likes; a closed connection ends it */
        status = ci_tp_link_recv(link, 0, &data, &bytes, 0.0);
        if (status != CINFER_OK) {
            ci_error_prefix("rank 0 went away without saying stop: ");
            break;
        }
        ci_tp_reply reply = {0};
        const ci_tp_header *header = data;
        const int stop = bytes >= sizeof *header && header->op == CI_TP_STOP;
        if (!stop) {
            reply.status = ci_tp_follower_execute(f, data, bytes, &reply.value);
            if (reply.status != CINFER_OK)
                snprintf(reply.message, sizeof reply.message, "%s", cinfer_last_error());
        }
        status = ci_tp_link_send(link, &reply, sizeof reply);
        if (status != CINFER_OK || stop) break;
    }
    watchdog_stop(&watch);
    ci_tp_follower_free(f);
    return status;
}
