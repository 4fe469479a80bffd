/* `cinfer bench`, the throughput tests (bench/bench.c); the CLI dispatches to it. */
#ifndef CINFER_BENCH_H
#define CINFER_BENCH_H

/* argv holds the options after "bench"; returns the process exit status. */
int cinfer_bench_main(int argc, char **argv);

#endif
