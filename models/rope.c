/* RoPE frequencies for every scaling type transformers' modeling_rope_utils.py knows that Llama
 * checkpoints use. transformers computes them with F32 tensors; the arithmetic below follows its
 * order and precision so that the angles match at long positions, where one ulp of inv_freq is
 * a visible phase error.
 *
 *   default:  inv_freq[i] = 1 / theta^(2i/D)
 *   linear:   inv_freq / factor
 *   dynamic:  theta' = theta · (factor·L/max_pos − (factor − 1))^(D/(D−2)) once the sequence
 *             length L passes max_position_embeddings
 *   llama3:   per wavelength band: unchanged (short), / factor (long), smooth blend (between)
 *   yarn:     blend of interpolated and extrapolated frequencies over a ramp of dimensions, and
 *             cos/sin scaled by an attention factor */
#include <math.h>

#include "model.h"

static void default_frequencies(float theta, int head_dim, float *inv_freq) {
    for (int i = 0; i < head_dim / 2; i++) {
        const float exponent = (float)(2 * i) / (float)head_dim;
        inv_freq[i] = 1.0f / powf(theta, exponent);
    }
}

static void llama3_frequencies(const ci_rope_config *r, int head_dim, float *inv_freq) {
    const float factor = (float)r->factor;
    const float low_freq_wavelen =
        (float)(r->original_max_position_embeddings / r->low_freq_factor);
    const float high_freq_wavelen =
        (float)(r->original_max_position_embeddings / r->high_freq_factor);
    for (int i = 0; i < head_dim / 2; i++) {
        const float wavelen = (float)(2.0 * M_PI) / inv_freq[i];
        float scaled = wavelen > low_freq_wavelen ? inv_freq[i] / factor : inv_freq[i];
        const int medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
        if (medium) {
            const float smooth =
                ((float)r->original_max_position_embeddings / wavelen - (float)r->low_freq_factor) /
                (float)(r->high_freq_factor - r->low_freq_factor);
            scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
        }
        inv_freq[i] = scaled;
    }
}

static double yarn_mscale(double scale, double mscale) {
    return scale <= 1.0 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

/* The dimension at which a frequency turns num_rotations times over the original context. */
static double yarn_correction_dim(double num_rotations, int head_dim, double theta, int max_pos) {
    return (head_dim * log(max_pos / (num_rotations * 2.0 * M_PI))) / (2.0 * log(theta));
}

static void yarn_frequencies(const ci_rope_config *r, int head_dim, float *inv_freq,
                             float *attention_scaling) {
    const int orig = r->original_max_position_embeddings;
    double low = yarn_correction_dim(r->beta_fast, head_dim, r->theta, orig);
    double high = yarn_correction_dim(r->beta_slow, head_dim, r->theta, orig);
    if (r->truncate) {
        low = floor(low);
        high = ceil(high);
    }
    if (low < 0.0) low = 0.0;
    if (high > head_dim - 1) high = head_dim - 1;
    if (low == high) high += 0.001; /* transformers: "prevent singularity" */
    for (int i = 0; i < head_dim / 2; i++) {
        const float pos_freq = powf((float)r->theta, (float)(2 * i) / (float)head_dim);
        const float extrapolation = 1.0f / pos_freq;
        const float interpolation = 1.0f / ((float)r->factor * pos_freq);
        float ramp = ((float)i - (float)low) / (float)(high - low);
        ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
        const float extrapolation_weight = 1.0f - ramp;
        inv_freq[i] =
            interpolation * (1.0f - extrapolation_weight) + extrapolation * extrapolation_weight;
    }
    if (r->attention_factor >= 0.0)
        *attention_scaling = (float)r->attention_factor;
    else if (r->mscale != 0.0 && r->mscale_all_dim != 0.0)
        *attention_scaling =
            (float)(yarn_mscale(r->factor, r->mscale) / yarn_mscale(r->factor, r->mscale_all_dim));
    else
        *attention_scaling = (float)yarn_mscale(r->factor, 1.0);
}

void ci_rope_frequencies(const ci_config *c, int seq_len, float *inv_freq,
                         float *attention_scaling) {
    const ci_rope_config *r = &c->rope;
    const int D = c->head_dim;
    *attention_scaling = 1.0f;
    switch (r->type) {
    case CI_ROPE_DEFAULT: default_frequencies((float)r->theta, D, inv_freq); break;
    case CI_ROPE_LINEAR:
        default_frequencies((float)r->theta, D, inv_freq);
        for (int i = 0; i < D / 2; i++) inv_freq[i] /= (float)r->factor;
        break;
    case CI_ROPE_DYNAMIC: {
        /* transformers grows the base only past max_position_embeddings, and (its rotary module
         * keeps state) computes it from the longest sequence seen; a fresh module, as here, uses
         * the current one. */
        const int length =
            seq_len > c->max_position_embeddings ? seq_len : c->max_position_embeddings;
        const float factor = (float)r->factor;
        const float growth =
            factor * (float)length / (float)c->max_position_embeddings - (factor - 1.0f);
        const float theta = (float)r->theta * powf(growth, (float)((double)D / (double)(D - 2)));
        default_frequencies(theta, D, inv_freq);
        break;
    }
    case CI_ROPE_LLAMA3:
        default_frequencies((float)r->theta, D, inv_freq);
        llama3_frequencies(r, D, inv_freq);
        break;
    case CI_ROPE_YARN: yarn_frequencies(r, D, inv_freq, attention_scaling); break;
    }
}
