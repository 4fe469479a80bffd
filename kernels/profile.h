/* Where the time of a forward step goes, op class by op class (cinfer bench --profile).
 *
 * While a profile runs, the backend's ops go through wrappers that put a timing mark on the
 * device's queue before and after each op (CUDA events on a GPU, the host clock on the CPU), and
 * the device time between each op's two marks is added to its class when the profile stops. The
 * host does not wait between ops, so the step runs as it would unprofiled; where the host is
 * slower to issue an op than the device to run the one before (small decode ops on a GPU), an
 * op's time includes that wait. Not for recorded (graph) steps, whose ops are not called one by
 * one. One backend at a time. */
#ifndef CINFER_PROFILE_H
#define CINFER_PROFILE_H

#include "backend.h"

/* Starts adding the time of be's ops into *profile (zeroed here), by op class (cinfer.h's
 * cinfer_op_class: attention and diff_attention; every matmul; rmsnorm; the rest); stop restores
 * the ops and adds up what was timed. */
void ci_profile_start(ci_backend *be, cinfer_profile *profile);
void ci_profile_stop(ci_backend *be);

#endif
