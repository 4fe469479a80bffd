/* The Prometheus `/metrics` endpoint of `cinfer serve` (programs/serve_metrics.c): the counters
 * and histograms the HTTP threads feed as requests end, and the text a scrape gets. Names, types,
 * buckets and the finished_reason label follow vLLM's (vllm/v1/metrics/loggers.py), with
 * `cinfer:` for `vllm:`, so that dashboards and alerts written for vLLM read cinfer unchanged.
 * Prints nothing and never exits: a failure is a NULL for the server to answer with a 500.
 *
 * The text is Prometheus' exposition format 0.0.4: `# HELP` and `# TYPE` before each family,
 * every series labelled model_name, counters ending in _total, histograms as cumulative
 * `_bucket{le=...}` up to le="+Inf", then `_sum` and `_count`. Numbers are printed as the
 * shortest decimal that reads back as the same double, never C's "nan" or "inf".
 *
 * Request series move when a request ends (its time to first token included), as vLLM's
 * finished-request series do; the engine's gauges and cache counters are read at each scrape. */
#ifndef CINFER_SERVE_METRICS_H
#define CINFER_SERVE_METRICS_H

#include "../include/cinfer.h"

/* The Content-Type of what serve_metrics_render returns, as Prometheus' clients send it. */
#define SERVE_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

typedef struct serve_metrics serve_metrics;

/* model_name: the served model's name for the model_name label (UTF-8; escaped here; NULL is
 * ""). max_model_len: the top of the token-count buckets, 1, 2, 5, 10, ... up to it, as vLLM
 * builds them (below 1: only +Inf). NULL when out of memory. */
serve_metrics *serve_metrics_create(const char *model_name, int max_model_len);
void serve_metrics_free(serve_metrics *m);

/* The calls below take an internal lock: any HTTP thread may make them at any time.
 *
 * A duration that is not a number >= 0 (a clock that stepped back) counts as 0 and one past
 * 1e9 s as 1e9 s, so that a finished request is in every histogram's count and no sum becomes
 * infinite; a negative token count counts as 0. */

/* A request has ended, for finish_reason "stop", "length", "abort" or "error" (anything else,
 * NULL included, counts as "error"): request_success_total{finished_reason}, the token totals
 * and the histograms of its prompt and generated tokens, queue time and end-to-end latency.
 * ttft_seconds < 0 (or NaN): no token was generated, so it is not in the time-to-first-token
 * histogram. */
void serve_metrics_request_finished(serve_metrics *m, const char *finish_reason,
                                    int n_prompt_tokens, int n_generation_tokens,
                                    double queue_seconds, double ttft_seconds, double e2e_seconds);

/* One gap between two tokens of the same request, as they were streamed. */
void serve_metrics_inter_token(serve_metrics *m, double seconds);

/* An error response with this HTTP status (100..599; anything else is not a status and is not
 * counted): http_errors_total{status}. */
void serve_metrics_request_refused(serve_metrics *m, int http_status);

/* The whole exposition as a malloc'd NUL-terminated text (release with free()), NULL when out of
 * memory. stats: the engine's, for num_requests_running/waiting, kv_cache_usage_perc (blocks
 * used / blocks), prefix_cache_queries/hits_total (in tokens) and num_preemptions_total; NULL
 * leaves those families out (no engine to ask). The counts are read under the lock, the text is
 * written after it, so a scrape does not hold up the HTTP threads. */
char *serve_metrics_render(serve_metrics *m, const cinfer_engine_stats *stats);

#endif
