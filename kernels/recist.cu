// RECIST 1.1 axes of every node's every axial slice at once: one block per (node, slice) task.
//
// Algorithm: the CPU twin's, lnrt.recist (docs/ARCHITECTURE.md, "Contracts"), step for step, so that the
// two agree to the last decision: outline points 0.25 px outside the boundary pixel centres; the long axis
// as the maximum Feret diameter over the points that are extreme in the host's table of 180 directions
// (the sampled form of the rotating calipers: Toussaint, "Solving geometric problems with the rotating
// calipers", Proc. IEEE MELECON 1983); the short axis as the longest inside run of chords perpendicular
// to it, sampled every 0.25 px and cut at the bilinear level 0.65. The threads of a block stride over the
// slice's pixels, points, directions, candidate pairs and chords, meeting at __syncthreads between phases:
//   1. points:     boundary pixels of the node in this slice, each moved 0.25 px towards each outside
//                  4-neighbour (group g = 0..3: -y, +y, -x, +x), stored unordered with the key
//                  g*h*w + y*w + x, which is the point's rank in the CPU twin's array order
//   2. extremes:   one thread per direction: the lowest and highest projection over the points
//   3. candidates: points within TIE_REL of some direction's extreme (the tie rule of the CPU twin)
//   4. long axis:  the largest squared distance over candidate pairs (atomicMax on order-preserving bits),
//                  then the first pair in the twin's order within TIE_REL of it (atomicMin on the pair key)
//   5. chords:     projections of all points on the long axis, its normal and the width direction
//                  (min/max); the chord lines and samples exactly as numpy.arange makes them
//   6. runs:       one thread per chord line: samples, runs above the level, crossings interpolated in the
//                  twin's float32/float64 mix; the longest run, ties to the first (line, start) in order
// The choice among a node's slices (widest first, pruning, the tie order) is the twin's own code, run on
// the host over these per-slice results (lnrt.kernels.cuda.recist_axes): every slice is measured here, so
// the pruning only decides which results count, exactly as it decides which slices the CPU measures.
// Compile with --fmad=false (the launcher does): a fused multiply-add rounds differently from NumPy.
// Every thread checks its indices against the task's sizes before any read or write.

#define TIE_REL 1e-9
#define OFFSET 0.25
#define SAMPLE_PX 0.25
#define MAX_LINES 256.0
#define MAX_SAMPLES 512.0
#define TASK 6   // tasks[t*TASK + ...]: label id, slice z, y0, x0, h, w (the node's bounding box in-plane)
#define ACC 12   // acc[t*ACC + ...]: the order-preserving accumulators below
#define GEO 24   // geo[t*GEO + ...]: the block's shared scalars, in global memory
#define OUT 12   // out[t*OUT + ...]: points, long mm, width mm, short mm, long ends (y0 x0 y1 x1), short ends

enum { A_ABS, A_TOP, A_PAIR, A_UMIN, A_UMAX, A_VMIN, A_VMAX, A_WMIN, A_WMAX, A_CTOP, A_CKEY, A_RUNS };
enum { G_E0Y, G_E0X, G_E1Y, G_E1X, G_LONG, G_NORM, G_EY, G_EX, G_NY, G_NX, G_HU, G_H, G_H64, G_U0, G_UD, G_NU,
       G_V0, G_VD, G_NV, G_PA, G_PB };

// doubles as unsigned integers in the same order (negatives reversed), for atomicMin/atomicMax
__device__ inline unsigned long long ordered(double v) {
    unsigned long long b = (unsigned long long)__double_as_longlong(v);
    return (b >> 63) ? ~b : (b | 0x8000000000000000ull);
}
__device__ inline double unordered(unsigned long long u) {
    unsigned long long b = (u >> 63) ? (u & 0x7fffffffffffffffull) : ~u;
    return __longlong_as_double((long long)b);
}

struct Task {
    unsigned int id;
    long long z;
    int y0, x0, h, w;
};

__device__ inline Task task_of(const long long* tasks, int t) {
    const long long* p = tasks + (long long)t * TASK;
    Task k;
    k.id = (unsigned int)p[0];
    k.z = p[1];
    k.y0 = (int)p[2];
    k.x0 = (int)p[3];
    k.h = (int)p[4];
    k.w = (int)p[5];
    return k;
}

// the node's mask at in-plane crop coordinates (0 outside the crop, as the twin's zero padding)
__device__ inline int inside(const unsigned int* labels, int ny, int nx, const Task& k, int y, int x) {
    if (y < 0 || x < 0 || y >= k.h || x >= k.w) return 0;
    int yy = k.y0 + y, xx = k.x0 + x;
    if (yy >= ny || xx >= nx) return 0;
    return labels[(k.z * ny + yy) * (long long)nx + xx] == k.id;
}

// whether the pixel (y, x) has an outside neighbour in group g (0: -y, 1: +y, 2: -x, 3: +x)
__device__ inline int boundary(const unsigned int* labels, int ny, int nx, const Task& k, int y, int x, int g) {
    int dy = g == 0 ? -1 : (g == 1 ? 1 : 0);
    int dx = g == 2 ? -1 : (g == 3 ? 1 : 0);
    return !inside(labels, ny, nx, k, y + dy, x + dx);
}

// the number of outline points of each task (the launcher sizes the point lists from it)
extern "C" __global__ void outline_count(const unsigned int* labels, int ny, int nx, const long long* tasks,
                                         int n_tasks, int* count) {
    int t = blockIdx.x;
    if (t >= n_tasks) return;
    Task k = task_of(tasks, t);
    for (long long p = threadIdx.x; p < (long long)k.h * k.w; p += blockDim.x) {
        int y = (int)(p / k.w), x = (int)(p % k.w);
        if (!inside(labels, ny, nx, k, y, x)) continue;
        int c = 0;
        for (int g = 0; g < 4; ++g) c += boundary(labels, ny, nx, k, y, x, g);
        if (c) atomicAdd(&count[t], c);
    }
}

// numpy.arange(start, stop, step)[i]: numpy fills element 1 as start + step and the rest as
// start + i * ((start + step) - start)
__device__ inline double arange_at(double start, double step, double delta, long long i) {
    if (i == 0) return start;
    if (i == 1) return start + step;
    return start + (double)i * delta;
}

__device__ inline long long arange_len(double start, double stop, double step) {
    double n = ceil((stop - start) / step);
    return n > 0 ? (long long)n : 0;
}

// the twin's bilinear interpolation of the zero-padded slice mask (float32 arithmetic, as NumPy's)
__device__ float bilinear(const unsigned int* labels, int ny, int nx, const Task& k, double y, double x) {
    double hp = k.h + 2, wp = k.w + 2;
    double yy = fmin(fmax(y + 1.0, 0.0), hp - 1.0);
    double xx = fmin(fmax(x + 1.0, 0.0), wp - 1.0);
    long long y0 = (long long)yy, x0 = (long long)xx;
    if (y0 > k.h) y0 = k.h;
    if (x0 > k.w) x0 = k.w;
    float fy = (float)(yy - (double)y0), fx = (float)(xx - (double)x0);
    int py = (int)y0 - 1, px = (int)x0 - 1;  // padded index -> crop index
    float f00 = (float)inside(labels, ny, nx, k, py, px), f01 = (float)inside(labels, ny, nx, k, py, px + 1);
    float f10 = (float)inside(labels, ny, nx, k, py + 1, px), f11 = (float)inside(labels, ny, nx, k, py + 1, px + 1);
    float top = f00 + fx * (f01 - f00);
    float bottom = f10 + fx * (f11 - f10);
    return top + fy * (bottom - top);
}

// where a chord crosses the level between samples a (outside side) and b: the twin's arithmetic under
// NumPy 2's promotion (NEP 50): the fraction in float32, times h in float32 where the twin's h is a Python
// float and in float64 where it is a NumPy float64. (NumPy 1.x computes both products in float32: lengths
// move by about 1e-8 mm, and among chords that long to within that, another may be taken first.)
__device__ inline double crossing(double v, float num, float den, double h, int h64) {
    float q = num / fmaxf(den, 1e-12f);
    return h64 ? v + (double)q * h : v + (double)(q * (float)h);
}

// one chord line: calls visit(length, key, v_start, v_end) for each inside run, in order
template <class F>
__device__ void runs_of_line(const unsigned int* labels, int ny, int nx, const Task& k, const double* g,
                             long long line, double sy, double sx, F visit) {
    const float LEVEL = 0.65f;
    double u = g[G_NU] < 0 ? g[G_U0] : arange_at(g[G_U0], g[G_HU], g[G_UD], line);
    double oy = g[G_E0Y] + u * g[G_EY], ox = g[G_E0X] + u * g[G_EX];
    long long nv = (long long)g[G_NV];
    double h = g[G_H];
    int h64 = (int)g[G_H64];
    float prev = 0.0f;
    double start = 0.0;
    for (long long j = 0; j <= nv; ++j) {
        float val = 0.0f;
        double vpad = (j == 0) ? arange_at(g[G_V0], h, g[G_VD], 0) - h : arange_at(g[G_V0], h, g[G_VD], j - 1);
        if (j < nv) {
            double v = arange_at(g[G_V0], h, g[G_VD], j);
            double py = oy + v * g[G_NY], px = ox + v * g[G_NX];
            val = bilinear(labels, ny, nx, k, py / sy, px / sx);
        }
        int was = prev >= LEVEL, is = val >= LEVEL;
        if (!was && is) start = crossing(vpad, LEVEL - prev, val - prev, h, h64);
        if (was && !is) {
            double end = crossing(vpad, prev - LEVEL, prev - val, h, h64);
            visit(end - start, line, start, end);
        }
        prev = val;
    }
}

extern "C" __global__ void recist_slices(const unsigned int* labels, int ny, int nx, const long long* tasks,
                                         int n_tasks, const long long* base, const double* dirs, int n_dirs,
                                         double sy, double sx, double* pts, long long* keys, int* cand,
                                         int* counts, unsigned long long* acc, double* geo, double* ext,
                                         double* out) {
    int t = blockIdx.x;
    if (t >= n_tasks) return;  // the whole block: no barrier is skipped by part of it
    Task k = task_of(tasks, t);
    long long b = base[t];
    long long hw = (long long)k.h * k.w;
    unsigned long long* a = acc + (long long)t * ACC;
    double* g = geo + (long long)t * GEO;
    double* e = ext + (long long)t * 2 * n_dirs;
    double* P = pts + 2 * b;
    long long* K = keys + b;
    int* C = cand + b;
    int* cnt = counts + 2 * t;  // [0]: points, [1]: candidates (zeroed by the launcher)
    // 1. outline points
    for (long long p = threadIdx.x; p < hw; p += blockDim.x) {
        int y = (int)(p / k.w), x = (int)(p % k.w);
        if (!inside(labels, ny, nx, k, y, x)) continue;
        for (int q = 0; q < 4; ++q) {
            if (!boundary(labels, ny, nx, k, y, x, q)) continue;
            int s = atomicAdd(&cnt[0], 1);
            double py = ((double)y + (q == 0 ? -OFFSET : (q == 1 ? OFFSET : 0.0))) * sy;
            double px = ((double)x + (q == 2 ? -OFFSET : (q == 3 ? OFFSET : 0.0))) * sx;
            P[2 * s] = py;
            P[2 * s + 1] = px;
            K[s] = q * hw + p;
            atomicMax(&a[A_ABS], ordered(fmax(fabs(py), fabs(px))));
        }
    }
    __syncthreads();
    int n = cnt[0];
    // 2. extremes per direction
    for (int d = threadIdx.x; d < n_dirs; d += blockDim.x) {
        double lo = 0.0, hi = 0.0;
        for (int i = 0; i < n; ++i) {
            double pr = P[2 * i] * dirs[d] + P[2 * i + 1] * dirs[n_dirs + d];
            if (i == 0 || pr < lo) lo = pr;
            if (i == 0 || pr > hi) hi = pr;
        }
        e[2 * d] = lo;
        e[2 * d + 1] = hi;
    }
    __syncthreads();
    // 3. candidates
    double scale = TIE_REL * fmax(n ? unordered(a[A_ABS]) : 0.0, 1.0);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        for (int d = 0; d < n_dirs; ++d) {
            double dy = dirs[d], dx = dirs[n_dirs + d];
            double tol = scale * (fabs(dy) + fabs(dx));
            double pr = P[2 * i] * dy + P[2 * i + 1] * dx;
            if (pr <= e[2 * d] + tol || pr >= e[2 * d + 1] - tol) {
                C[atomicAdd(&cnt[1], 1)] = i;
                break;
            }
        }
    }
    __syncthreads();
    // 4. long axis: the largest squared distance, then the first pair (in the twin's order) within TIE_REL
    long long nc = cnt[1];
    for (long long q = threadIdx.x; q < nc * nc; q += blockDim.x) {
        int i = C[q / nc], j = C[q % nc];
        double dy = P[2 * i] - P[2 * j], dx = P[2 * i + 1] - P[2 * j + 1];
        atomicMax(&a[A_TOP], ordered(dy * dy + dx * dx));
    }
    __syncthreads();
    double top = unordered(a[A_TOP]);
    for (long long q = threadIdx.x; q < nc * nc; q += blockDim.x) {
        int i = C[q / nc], j = C[q % nc];
        double dy = P[2 * i] - P[2 * j], dx = P[2 * i + 1] - P[2 * j + 1];
        double d2 = dy * dy + dx * dx;
        if (d2 >= top - TIE_REL * fabs(top)) atomicMin(&a[A_PAIR], (unsigned long long)(K[i] * (4 * hw) + K[j]));
    }
    __syncthreads();
    long long ka = (long long)(a[A_PAIR] / (unsigned long long)(4 * hw));
    long long kb = (long long)(a[A_PAIR] % (unsigned long long)(4 * hw));
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        if (K[i] == ka) g[G_PA] = i;  // the pair's point indices (keys are unique)
        if (K[i] == kb) g[G_PB] = i;
    }
    __syncthreads();
    if (threadIdx.x == 0 && n) {
        int i = (int)g[G_PA], j = (int)g[G_PB];
        double dy = P[2 * i] - P[2 * j], dx = P[2 * i + 1] - P[2 * j + 1];
        g[G_LONG] = sqrt(dy * dy + dx * dx);
        g[G_E0Y] = P[2 * i];
        g[G_E0X] = P[2 * i + 1];
        g[G_E1Y] = P[2 * j];
        g[G_E1X] = P[2 * j + 1];
        double ey = g[G_E1Y] - g[G_E0Y], ex = g[G_E1X] - g[G_E0X];
        double norm = sqrt(ey * ey + ex * ex);
        g[G_NORM] = norm;
        g[G_EY] = norm > 0 ? ey / norm : 0.0;
        g[G_EX] = norm > 0 ? ex / norm : 0.0;
        g[G_NY] = norm > 0 ? -ex / norm : 1.0;  // the normal; (1, 0) for a single point, as the twin's width
        g[G_NX] = norm > 0 ? ey / norm : 0.0;
    }
    __syncthreads();
    // 5. projections on the long axis (u), its normal (v) and the width direction (= the normal)
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        double ry = P[2 * i] - g[G_E0Y], rx = P[2 * i + 1] - g[G_E0X];
        double u = ry * g[G_EY] + rx * g[G_EX];
        double v = ry * g[G_NY] + rx * g[G_NX];
        double w = P[2 * i] * g[G_NY] + P[2 * i + 1] * g[G_NX];
        atomicMin(&a[A_UMIN], ordered(u));
        atomicMax(&a[A_UMAX], ordered(u));
        atomicMin(&a[A_VMIN], ordered(v));
        atomicMax(&a[A_VMAX], ordered(v));
        atomicMin(&a[A_WMIN], ordered(w));
        atomicMax(&a[A_WMAX], ordered(w));
    }
    __syncthreads();
    if (threadIdx.x == 0 && n && g[G_NORM] > 0) {
        double fine = SAMPLE_PX * fmin(sy, sx);
        double umin = unordered(a[A_UMIN]), umax = unordered(a[A_UMAX]);
        double vmin = unordered(a[A_VMIN]), vmax = unordered(a[A_VMAX]);
        double hu = (umax - umin) / MAX_LINES > fine ? (umax - umin) / MAX_LINES : fine;
        double h = (vmax - vmin) / MAX_SAMPLES > fine ? (vmax - vmin) / MAX_SAMPLES : fine;
        g[G_H64] = (vmax - vmin) / MAX_SAMPLES > fine;  // NumPy: a float64 h, else a Python float (float32 math)
        g[G_HU] = hu;
        g[G_H] = h;
        g[G_U0] = umin + hu / 2;
        g[G_UD] = (g[G_U0] + hu) - g[G_U0];
        g[G_NU] = (double)arange_len(g[G_U0], umax, hu);
        if (g[G_NU] == 0) {  // no line fits: the twin takes the middle one
            g[G_U0] = (umin + umax) / 2;
            g[G_NU] = -1;
        }
        g[G_V0] = vmin - 2 * h;
        g[G_VD] = (g[G_V0] + h) - g[G_V0];
        g[G_NV] = (double)arange_len(g[G_V0], vmax + 2 * h, h);
    }
    __syncthreads();
    // 6. chord runs: the longest, then the first (line, start) within TIE_REL of it
    long long lines = (n && g[G_NORM] > 0) ? (g[G_NU] < 0 ? 1 : (long long)g[G_NU]) : 0;
    long long stride = (long long)g[G_NV] + 1;
    for (long long l = threadIdx.x; l < lines; l += blockDim.x) {
        runs_of_line(labels, ny, nx, k, g, l, sy, sx, [&](double len, long long, double, double) {
            atomicAdd(&a[A_RUNS], 1ull);
            atomicMax(&a[A_CTOP], ordered(len));
        });
    }
    __syncthreads();
    double ctop = unordered(a[A_CTOP]);
    for (long long l = threadIdx.x; l < lines; l += blockDim.x) {
        long long start_key = 0;
        runs_of_line(labels, ny, nx, k, g, l, sy, sx, [&](double len, long long line, double, double) {
            if (len >= ctop - TIE_REL * fabs(ctop))
                atomicMin(&a[A_CKEY], (unsigned long long)(line * stride + start_key));
            ++start_key;  // runs of a line in order: the k-th run's rank stands in for its start column
        });
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    double* o = out + (long long)t * OUT;
    o[0] = n;
    if (!n) return;
    o[1] = g[G_LONG];
    o[4] = g[G_E0Y];
    o[5] = g[G_E0X];
    o[6] = g[G_E1Y];
    o[7] = g[G_E1X];
    o[2] = unordered(a[A_WMAX]) - unordered(a[A_WMIN]);
    // no chord: a zero-length long axis keeps its ends, no run keeps the long axis' first end twice
    o[3] = 0.0;
    o[8] = o[10] = g[G_E0Y];
    o[9] = o[11] = g[G_E0X];
    if (g[G_NORM] == 0) {
        o[10] = g[G_E1Y];
        o[11] = g[G_E1X];
    }
    if (!lines || !a[A_RUNS]) return;
    long long best_line = (long long)(a[A_CKEY] / (unsigned long long)stride);
    long long best_rank = (long long)(a[A_CKEY] % (unsigned long long)stride);
    long long rank = 0;
    double u = g[G_NU] < 0 ? g[G_U0] : arange_at(g[G_U0], g[G_HU], g[G_UD], best_line);
    runs_of_line(labels, ny, nx, k, g, best_line, sy, sx, [&](double len, long long, double vs, double ve) {
        if (rank++ != best_rank) return;
        double cy = g[G_E0Y] + u * g[G_EY], cx = g[G_E0X] + u * g[G_EX];
        o[3] = len;
        o[8] = cy + vs * g[G_NY];
        o[9] = cx + vs * g[G_NX];
        o[10] = cy + ve * g[G_NY];
        o[11] = cx + ve * g[G_NX];
    });
}
