// 3D connected-component labelling on the GPU: union-find with atomic hooking and path halving.
//
// Algorithm (union-find over voxels, one thread per voxel, as in Playne & Hawick, "A New Algorithm for
// Parallel Connected-Component Labelling on GPUs", IEEE TPDS 29(6), 2018; path halving by compare-and-swap
// as in Jayanti & Tarjan, "A Randomized Concurrent Algorithm for Disjoint Set Union", PODC 2016):
//   1. init:     every foreground voxel i is its own tree, parent[i] = i; background gets NONE.
//   2. merge:    every foreground voxel looks at its already-visited neighbours (the half of the 6/18/26
//                neighbourhood that precedes it in raster order) and unites the two trees. The union
//                always hooks the larger root under the smaller one with atomicMin, and retries from the
//                value atomicMin returned until the hook holds, so after all merges each tree's root is the
//                smallest linear index in the component: its first voxel in C (z, y, x) raster order.
//                Every root search halves the path it walks (each visited voxel is pointed at its
//                grandparent with atomicCAS, which fails harmlessly if another thread moved it first), so a
//                large solid blob does not grow deep chains that later searches walk again and again.
//   3. compress: every voxel follows its parents to the root.
//   4. roots + relabel: "is a root" flags, their inclusive prefix sum (CuPy's cumsum, on the Python side)
//                gives each root its 1-based rank, and every voxel takes its root's rank: consecutive ids
//                1..N in raster order of each component's first voxel (cc3d's and SciPy's numbering,
//                docs/ARCHITECTURE.md, "Twins").
//
// Indices are 64-bit when the volume needs it: the Python side compiles this file with
// -DLNRT_INDEX=long long for volumes of 2^31 voxels or more, int otherwise.
// Every thread checks its index against n before any read or write.

#ifndef LNRT_INDEX
#define LNRT_INDEX int
#endif
typedef LNRT_INDEX idx_t;
#define NONE ((idx_t)-1)

// compare-and-swap on an index (CUDA has no signed 64-bit atomicCAS: the unsigned one does the same bits)
__device__ inline int cas_index(int* address, int expected, int desired) {
    return atomicCAS(address, expected, desired);
}
__device__ inline long long cas_index(long long* address, long long expected, long long desired) {
    return (long long)atomicCAS((unsigned long long*)address, (unsigned long long)expected,
                                (unsigned long long)desired);
}

// the root of i's tree, pointing each voxel on the way at its grandparent (path halving)
__device__ idx_t find_root(idx_t* parent, idx_t i) {
    while (true) {
        idx_t p = parent[i];
        if (p == i) return i;
        idx_t gp = parent[p];
        if (gp == p) return p;
        cas_index(&parent[i], p, gp);
        i = gp;
    }
}

__device__ void unite(idx_t* parent, idx_t a, idx_t b) {
    // hook the larger root under the smaller, retrying while another thread moves either root
    bool done = false;
    while (!done) {
        a = find_root(parent, a);
        b = find_root(parent, b);
        if (a == b) {
            done = true;
        } else if (a < b) {
            idx_t old = atomicMin(&parent[b], a);
            done = (old == b);
            b = old;
        } else {
            idx_t old = atomicMin(&parent[a], b);
            done = (old == a);
            a = old;
        }
    }
}

extern "C" __global__ void init(const unsigned char* mask, idx_t* parent, idx_t n) {
    idx_t i = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    parent[i] = mask[i] ? i : NONE;
}

// connectivity: 6, 18 or 26. Only neighbours with a smaller linear index are visited (13 offsets for
// 26-connectivity, 9 for 18, 3 for 6), so every adjacent pair is united exactly once.
extern "C" __global__ void merge(const unsigned char* mask, idx_t* parent, int nz, int ny, int nx,
                                 int connectivity) {
    idx_t n = (idx_t)nz * ny * nx;
    idx_t i = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || !mask[i]) return;
    int x = (int)(i % nx);
    int y = (int)((i / nx) % ny);
    int z = (int)(i / ((idx_t)nx * ny));
    for (int dz = -1; dz <= 0; ++dz) {
        for (int dy = -1; dy <= 1; ++dy) {
            for (int dx = -1; dx <= 1; ++dx) {
                // keep only offsets that precede (z, y, x) in raster order
                if (dz == 0 && (dy > 0 || (dy == 0 && dx >= 0))) continue;
                int order = (dz != 0) + (dy != 0) + (dx != 0);
                if (connectivity == 6 && order > 1) continue;
                if (connectivity == 18 && order > 2) continue;
                int zz = z + dz, yy = y + dy, xx = x + dx;
                if (zz < 0 || yy < 0 || yy >= ny || xx < 0 || xx >= nx) continue;
                idx_t j = ((idx_t)zz * ny + yy) * nx + xx;
                if (mask[j]) unite(parent, i, j);
            }
        }
    }
}

extern "C" __global__ void compress(idx_t* parent, idx_t n) {
    idx_t i = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || parent[i] == NONE) return;
    parent[i] = find_root(parent, i);
}

// is_root[i] = 1 where voxel i is the first voxel of its component
extern "C" __global__ void roots(const idx_t* parent, int* is_root, idx_t n) {
    idx_t i = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    is_root[i] = (parent[i] == i) ? 1 : 0;
}

// labels[i] = rank[root] (the inclusive prefix sum of root flags: 1 for the first root), 0 for background
extern "C" __global__ void relabel(const idx_t* parent, const int* rank, unsigned int* labels, idx_t n) {
    idx_t i = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    idx_t p = parent[i];
    labels[i] = (p == NONE) ? 0u : (unsigned int)rank[p];
}
