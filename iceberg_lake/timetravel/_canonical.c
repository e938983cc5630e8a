/*
 * The compiled half of the replay's canonical encoding: whole rows of JSON, and the hashed
 * frames of merged events. Called through ctypes from `native.py`, which documents
 * the arguments; compiled by `_native_build.py` (at install through `hatch_build.py`, or on
 * first use in a checkout) into `_canonical-<SHA-256 of this file>.so`, so an edit is never
 * served by a stale build.
 *
 * Byte for byte what the numba kernels it replaces wrote (the recorded sequence hashes depend on
 * it): the float rule is `m = floor(|x| * 10^k + 0.5)` with `m / 10^k == |x|`, in IEEE double
 * arithmetic with no fused multiply-add (built with -ffp-contract=off, never -ffast-math).
 *
 * Every 2-d argument is C-contiguous with `n` columns: element (s, i) is at `s * n + i`.
 * Nothing is bounds-checked: the caller sizes every buffer.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

static const double POW10[16] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};

static const char PAIRS[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* For every valid value, the decimals `k` of the plain-notation fast path, or -1. */
void float_decimals(const double *values, const uint8_t *valid, int64_t n, int8_t *out) {
    for (int64_t i = 0; i < n; i++) {
        out[i] = -1;
        if (!valid[i]) continue;
        double ax = fabs(values[i]);
        if (ax == 0.0) {
            out[i] = 0;
            continue;
        }
        if (!(ax >= 1e-5 && ax < 1e15)) continue;
        for (int k = 0; k < 16; k++) {
            double p = POW10[k];
            double scaled = ax * p;
            if (scaled >= 1e15) break;
            double m = floor(scaled + 0.5);
            if (m / p == ax) {
                out[i] = (int8_t)k;
                break;
            }
        }
    }
}

static inline uint64_t small_digits(uint64_t u) {
    if (u < 10000u) {
        if (u < 100u) return u < 10u ? 1 : 2;
        return u < 1000u ? 3 : 4;
    }
    if (u < 1000000u) return u < 100000u ? 5 : 6;
    return u < 10000000u ? 7 : 8;
}

/* `u < 10^8` in decimal at out[pos:], two digits per division; returns the end. */
static inline uint64_t write_small(uint8_t *out, uint64_t pos, uint64_t u) {
    uint64_t end = pos + small_digits(u);
    uint64_t n = end;
    while (u >= 100u) {
        uint64_t r = u % 100u;
        u /= 100u;
        n -= 2;
        memcpy(out + n, PAIRS + 2 * r, 2);
    }
    if (u >= 10u) {
        memcpy(out + n - 2, PAIRS + 2 * u, 2);
    } else {
        out[n - 1] = (uint8_t)('0' + u);
    }
    return end;
}

/* `u < 10^8` as exactly eight digits (leading zeros) at out[pos:]. */
static inline void write_eight(uint8_t *out, uint64_t pos, uint64_t u) {
    uint64_t hi = u / 10000u, lo = u - hi * 10000u;
    uint64_t a = hi / 100u, b = hi - a * 100u, c = lo / 100u, d = lo - c * 100u;
    memcpy(out + pos, PAIRS + 2 * a, 2);
    memcpy(out + pos + 2, PAIRS + 2 * b, 2);
    memcpy(out + pos + 4, PAIRS + 2 * c, 2);
    memcpy(out + pos + 6, PAIRS + 2 * d, 2);
}

/* `u` in decimal at out[pos:]; returns the end (eight-digit groups: independent divisions). */
static inline uint64_t write_uint(uint8_t *out, uint64_t pos, uint64_t u) {
    const uint64_t e8 = 100000000u, e16 = 10000000000000000u;
    if (u < e8) return write_small(out, pos, u);
    if (u < e16) {
        uint64_t hi = u / e8;
        pos = write_small(out, pos, hi);
        write_eight(out, pos, u - hi * e8);
        return pos + 8;
    }
    uint64_t top = u / e16, rest = u - top * e16, mid = rest / e8;
    pos = write_small(out, pos, top);
    write_eight(out, pos, mid);
    write_eight(out, pos + 8, rest - mid * e8);
    return pos + 16;
}

static inline uint64_t copy(uint8_t *out, uint64_t pos, const uint8_t *src, int64_t a, int64_t b) {
    memcpy(out + pos, src + a, (size_t)(b - a));
    return pos + (uint64_t)(b - a);
}

/* A fast-path float `x` with `k` decimals at out[pos:]; returns the end. */
static inline uint64_t write_float(uint8_t *out, uint64_t pos, double x, uint64_t k) {
    if (x < 0.0) out[pos++] = '-';
    uint64_t m = (uint64_t)floor(fabs(x) * POW10[k] + 0.5);
    uint64_t start = pos;
    pos = write_uint(out, pos, m);
    if (k == 0) {
        out[pos] = '.';
        out[pos + 1] = '0';
        return pos + 2;
    }
    uint64_t digits = pos - start;
    if (digits > k) {
        /* Shift the last k digits right by one and put the point in. */
        memmove(out + pos - k + 1, out + pos - k, k);
        out[pos - k] = '.';
        return pos + 1;
    }
    /* 0.00ddd: move the digits right by (k - digits) + 2. */
    uint64_t shift = k - digits + 2;
    memmove(out + start + shift, out + start, digits);
    out[start] = '0';
    out[start + 1] = '.';
    memset(out + start + 2, '0', shift - 2);
    return pos + shift;
}

/*
 * The JSON of rows 0..n-1 into `out`, row i at out[offsets[i]:offsets[i + 1]]. Column j (key
 * order) is kinds[j] -- 0: integer ints[slots[j], i]; 1: float floats[slots[j], i] with
 * decimals[.] from float_decimals, or the entry floatfb[.] when formatted elsewhere; 2: the
 * preformatted entry stridx[slots[j], i] of entdata/entoff (-1: null) -- preceded by its key
 * fragment keydata[keyoff[j]:keyoff[j + 1]]; the closing fragment is the last one. Returns the
 * bytes written.
 */
int64_t write_rows(int64_t n, int64_t ncols, const int8_t *kinds, const int64_t *slots,
                   const uint8_t *keydata, const int64_t *keyoff, const int64_t *ints,
                   const uint8_t *intvalid, const double *floats, const uint8_t *floatvalid,
                   const int8_t *decimals, const int64_t *floatfb, const int64_t *stridx,
                   const uint8_t *entdata, const int64_t *entoff, uint8_t *out,
                   int64_t *offsets) {
    static const uint8_t null[4] = {'n', 'u', 'l', 'l'};
    uint64_t pos = 0;
    offsets[0] = 0;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < ncols; j++) {
            pos = copy(out, pos, keydata, keyoff[j], keyoff[j + 1]);
            int64_t at = slots[j] * n + i;
            if (kinds[j] == 0) {
                if (!intvalid[at]) {
                    pos = copy(out, pos, null, 0, 4);
                    continue;
                }
                int64_t v = ints[at];
                uint64_t u;
                if (v < 0) {
                    out[pos++] = '-';
                    u = (uint64_t)(-(v + 1)) + 1u;
                } else {
                    u = (uint64_t)v;
                }
                pos = write_uint(out, pos, u);
            } else if (kinds[j] == 1) {
                if (!floatvalid[at]) {
                    pos = copy(out, pos, null, 0, 4);
                    continue;
                }
                int8_t k = decimals[at];
                if (k < 0) {
                    int64_t e = floatfb[at];
                    pos = copy(out, pos, entdata, entoff[e], entoff[e + 1]);
                    continue;
                }
                pos = write_float(out, pos, floats[at], (uint64_t)k);
            } else {
                int64_t e = stridx[at];
                if (e < 0) {
                    pos = copy(out, pos, null, 0, 4);
                    continue;
                }
                pos = copy(out, pos, entdata, entoff[e], entoff[e + 1]);
            }
        }
        pos = copy(out, pos, keydata, keyoff[ncols], keyoff[ncols + 1]);
        offsets[i + 1] = (int64_t)pos;
    }
    return (int64_t)pos;
}

/*
 * The hashed frame of every merged event (prefix, payload, '\n') into `framed`, and its bare
 * payload into `bare` when want_bare. Event r is row g = offset_base[k] + rowpos[r] of part
 * k = part_of[r], whose payload is bytes [offsets[g], offsets[g + 1]) of the buffer at
 * addresses[k]; its prefix is prefixes[prefix_off[k]:prefix_off[k + 1]]. Returns the framed
 * bytes written.
 */
int64_t frame_rows(int64_t n, const int64_t *part_of, const int64_t *rowpos,
                   const int64_t *offsets, const int64_t *offset_base, const uint64_t *addresses,
                   const uint8_t *prefixes, const int64_t *prefix_off, uint8_t *framed,
                   int64_t *framed_off, uint8_t *bare, int64_t *bare_off, int32_t want_bare) {
    uint64_t pos = 0, bpos = 0;
    framed_off[0] = 0;
    if (want_bare) bare_off[0] = 0;
    for (int64_t r = 0; r < n; r++) {
        int64_t k = part_of[r];
        int64_t g = offset_base[k] + rowpos[r];
        pos = copy(framed, pos, prefixes, prefix_off[k], prefix_off[k + 1]);
        int64_t a = offsets[g];
        size_t size = (size_t)(offsets[g + 1] - a);
        const uint8_t *source = (const uint8_t *)(uintptr_t)addresses[k] + a;
        memcpy(framed + pos, source, size);
        pos += size;
        framed[pos++] = '\n';
        framed_off[r + 1] = (int64_t)pos;
        if (want_bare) {
            memcpy(bare + bpos, source, size);
            bpos += size;
            bare_off[r + 1] = (int64_t)bpos;
        }
    }
    return (int64_t)pos;
}

