/* The serving test of `cinfer bench` (programs/bench_serve.c): many requests through the
 * continuous-batching engine, as vLLM's `vllm bench throughput` and `vllm bench serve` measure
 * it. bench.c hands its arguments over when one of the serving options is among them. */
#ifndef CINFER_BENCH_SERVE_H
#define CINFER_BENCH_SERVE_H

/* Non-zero when argv asks for the serving test (--num-prompts, --dataset or another option
 * only the serving test takes). */
int bench_serve_wanted(int argc, char **argv);
/* argv: the options after `bench`; returns the exit status. */
int bench_serve_main(int argc, char **argv);
/* Its section of `cinfer bench --help`. */
extern const char *const bench_serve_usage_text;

#endif
