/*
 * Terms the cost functions of the algorithms share. Each prediction is
 * messages * alpha + bytes on the wire * beta + bytes touched * gamma along the
 * critical path of one rank. The nnz of the global sum is not known before
 * the collective runs; it is estimated from the ranks' nnz by assuming
 * independent, uniformly spread indices (n * (1 - (1 - k/n)^m) for the union
 * of m ranks), the pessimistic case for sparse algorithms: overlapping indices
 * only make them cheaper.
 *
 * With a lossy value format (c->quantized_value_bytes = q > 0) dense data
 * travels as q bytes per value (sparse_vector.h: the switch to dense
 * quantized), so every cap at the dense size is n*q where q < c_d; with
 * q == 0 every term is the exact one. The format's coding is not local work
 * at gamma per byte: its passes are costed at the format's own seconds per
 * value (c->encode_seconds, decode_seconds, decode_add_seconds, measured by
 * `scaleml-bench calibrate`), and each lossy path counts the values it
 * encodes, decodes and decodes-and-adds along one rank's critical path.
 */
#include <math.h>

#include "collectives/registry.h"

double sa_expected_union(uint64_t n, double k_mean, double ranks)
{
    if (n == 0 || k_mean <= 0) return 0.0;
    double density = k_mean / (double)n;
    if (density >= 1.0) return (double)n;
    /* (1 - d)^m - 1, accurate for tiny d (very sparse vectors in huge dimensions) */
    return (double)n * -expm1(ranks * log1p(-density));
}

int sa_quantizes(const scaleml_cost_case *c)
{
    return c->quantized_value_bytes > 0 && c->quantized_value_bytes < c->value_bytes;
}

double sa_dense_wire_bytes(const scaleml_cost_case *c, double len)
{
    return len * (sa_quantizes(c) ? c->quantized_value_bytes : c->value_bytes);
}

int sa_travels_quantized(const scaleml_cost_case *c, double entries)
{
    /* sa_wire_bytes' choice: the sparse form only while it is smaller */
    return sa_quantizes(c) && !(entries * (c->index_bytes + c->value_bytes) < sa_dense_wire_bytes(c, (double)c->n));
}

double sa_codec_seconds(const scaleml_cost_case *c, double encoded, double decoded, double decode_added)
{
    return encoded * c->encode_seconds + decoded * c->decode_seconds + decode_added * c->decode_add_seconds;
}

double sa_wire_bytes(const scaleml_cost_case *c, double entries)
{
    double sparse = entries * (c->index_bytes + c->value_bytes);
    double dense = sa_dense_wire_bytes(c, (double)c->n);
    return SA_SEGMENT_HEADER_BYTES + (sparse < dense ? sparse : dense);
}

int sa_log2_floor(int p)
{
    int log = 0;
    while (p > 1) {
        p >>= 1;
        log++;
    }
    return log;
}

double scaleml_expected_union(uint64_t n, double k_mean, double ranks)
{
    return sa_expected_union(n, k_mean, ranks);
}
