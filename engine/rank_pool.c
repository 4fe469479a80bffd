/* The follower ranks' threads (rank_pool.h): each sleeps on a condition variable until the job
 * generation changes, runs its part, and counts itself done. Ranks may outnumber cores: nobody
 * spins. */
#include <pthread.h>
#include <stdlib.h>

#include "rank_pool.h"

typedef struct follower {
    ci_rank_pool *pool;
    int rank;
    pthread_t thread;
} follower;

struct ci_rank_pool {
    pthread_mutex_t lock;
    pthread_cond_t start, done;
    unsigned long generation; /* bumped by every start */
    int n_done;               /* followers done with the current generation */
    int quit;
    ci_rank_job fn;
    void *arg;
    int n_followers, n_started;
    follower *followers; /* [n_followers]: ranks 1 .. tp-1 */
};

static void *follower_main(void *user) {
    follower *f = user;
    ci_rank_pool *p = f->pool;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->quit && p->generation == seen) pthread_cond_wait(&p->start, &p->lock);
        if (p->quit) break;
        seen = p->generation;
        const ci_rank_job fn = p->fn;
        void *arg = p->arg;
        pthread_mutex_unlock(&p->lock);
        fn(arg, f->rank);
        pthread_mutex_lock(&p->lock);
        if (++p->n_done == p->n_followers) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

ci_rank_pool *ci_rank_pool_create(int tp) {
    ci_rank_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_followers = tp - 1;
    p->followers = calloc((size_t)(tp > 1 ? tp - 1 : 1), sizeof *p->followers);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    if (!p->followers) {
        ci_rank_pool_free(p);
        return NULL;
    }
    for (int i = 0; i < p->n_followers; i++) {
        p->followers[i] = (follower){p, i + 1, 0};
        if (pthread_create(&p->followers[i].thread, NULL, follower_main, &p->followers[i]) != 0) {
            ci_rank_pool_free(p);
            return NULL;
        }
        p->n_started++;
    }
    return p;
}

void ci_rank_pool_start(ci_rank_pool *p, ci_rank_job fn, void *arg) {
    pthread_mutex_lock(&p->lock);
    p->fn = fn;
    p->arg = arg;
    p->n_done = 0;
    p->generation++;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->lock);
}

void ci_rank_pool_wait(ci_rank_pool *p) {
    pthread_mutex_lock(&p->lock);
    while (p->n_done < p->n_followers) pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);
}

void ci_rank_pool_free(ci_rank_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    p->quit = 1;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->followers[i].thread, NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    free(p->followers);
    free(p);
}
