#include <stdlib.h>
#include <string.h>
#include "serve_metrics.h"
struct serve_metrics { int x; };
serve_metrics *serve_metrics_create(const char *n) { (void)n; return calloc(1, sizeof(serve_metrics)); }
void serve_metrics_free(serve_metrics *m) { free(m); }
void serve_metrics_request_finished(serve_metrics *m, const char *r, int a, int b, double q, double t, double e) { (void)m;(void)r;(void)a;(void)b;(void)q;(void)t;(void)e; }
void serve_metrics_inter_token(serve_metrics *m, double s) { (void)m; (void)s; }
void serve_metrics_request_refused(serve_metrics *m, int h) { (void)m; (void)h; }
char *serve_metrics_render(serve_metrics *m, const cinfer_engine_stats *s) { (void)m; (void)s; return strdup("# stub\n"); }
