/* TEMPORARY stand-in until the metrics helper's file lands */
#ifndef CINFER_SERVE_METRICS_H
#define CINFER_SERVE_METRICS_H
#include "../include/cinfer.h"
typedef struct serve_metrics serve_metrics;
serve_metrics *serve_metrics_create(const char *model_name);
void serve_metrics_free(serve_metrics *m);
void serve_metrics_request_finished(serve_metrics *m, const char *finish_reason, int n_prompt_tokens, int n_generation_tokens, double queue_seconds, double ttft_seconds, double e2e_seconds);
void serve_metrics_inter_token(serve_metrics *m, double seconds);
void serve_metrics_request_refused(serve_metrics *m, int http_status);
char *serve_metrics_render(serve_metrics *m, const cinfer_engine_stats *stats);
#endif
