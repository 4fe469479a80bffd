/* Where the time of a forward step goes, op class by op class (cinfer bench --profile).
 *
 * While a profile runs, the backend's ops go through wrappers that wait for the device before and
 * after each op and add its time to the op's class. Waiting after every op removes the overlap of
 * launches with work, so a profiled step takes somewhat longer than an unprofiled one: the shares
 * are what the profile is for, and the step time is printed beside them. One backend at a time;
 * not for recorded (graph) steps, whose ops are not called one by one. */
#ifndef CINFER_PROFILE_H
#define CINFER_PROFILE_H

#include "backend.h"

typedef enum ci_op_class {
    CI_OP_ATTENTION, /* attention, diff_attention */
    CI_OP_MATMUL,    /* every linear layer and lm_head */
    CI_OP_NORM,      /* rmsnorm */
    CI_OP_OTHER,     /* embedding, rope, activations, residual adds, KV stores, argmax */
    CI_OP_CLASS_COUNT
} ci_op_class;

typedef struct ci_op_profile {
    double seconds[CI_OP_CLASS_COUNT];
    int calls[CI_OP_CLASS_COUNT];
} ci_op_profile;

const char *ci_op_class_name(ci_op_class op_class);

/* Starts adding the time of be's ops into *profile (zeroed here); stop restores the ops. */
void ci_profile_start(ci_backend *be, ci_op_profile *profile);
void ci_profile_stop(ci_backend *be);

#endif
