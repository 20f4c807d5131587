// Per-component statistics in one pass over a label volume (all components at once).
//
// Algorithm: one thread per voxel; a labelled voxel adds itself to its component's accumulators with
// atomics: voxel count (atomicAdd), bounding box (atomicMin/atomicMax per axis), centroid sums
// (double atomicAdd, compute capability 6.0+), intensity sum and probability sum (double atomicAdd) and
// one class vote (atomicAdd into a (components x classes) table). This is the scatter form of the
// "one pass over node voxels" of the CPU twin, lnrt.nodes.component_stats (which groups voxels by one sort);
// contention is bounded by component size, and lymph-node components are small. Reference for the
// atomic-accumulation pattern: Harris, Sengupta & Owens, "Parallel Prefix Sum (Scan) with CUDA",
// GPU Gems 3 ch. 39 (for the scan used to number components) and the CUDA C++ Programming Guide,
// "Atomic Functions".
//
// Layout of the outputs (k = label - 1, labels are 1..n_labels, 0 is background), the same fields and
// dtypes as the CPU twin `lnrt.nodes.component_stats`:
//   count[k], bbox[k*6 + 0..5] = zmin, ymin, xmin, zmax, ymax, xmax (inclusive),
//   sums[k*5 + 0..4] = sum z, sum y, sum x, sum intensity, sum probability,
//   votes[k*n_classes + c] (class ids >= n_classes are not counted),
//   first[k] = the smallest base + z*sz + y*sy + x*sx over the component: its first voxel in another
//   array order (the input scan's raster order, when the labels are a canonical view of it).
// The caller initializes count/sums/votes to 0, bbox mins to INT_MAX and maxes to -1, first to ULLONG_MAX.
// Offsets into the tables are 64-bit (k*6 in 32 bits wraps past about 358 M labels).
// Every thread checks its index against n and its label against n_labels before any write.

#ifndef LNRT_INDEX
#define LNRT_INDEX int
#endif
typedef LNRT_INDEX idx_t;

extern "C" __global__ void component_stats(const unsigned int* labels, const float* image, const float* prob,
                                           const unsigned char* classes, int nz, int ny, int nx,
                                           unsigned int n_labels, int n_classes, long long base,
                                           long long sz, long long sy, long long sx,
                                           unsigned long long* count, int* bbox, double* sums,
                                           unsigned long long* votes, unsigned long long* first) {
    idx_t n = (idx_t)nz * ny * nx;
    idx_t i = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned int lab = labels[i];
    if (lab == 0u || lab > n_labels) return;
    long long k = (long long)(lab - 1u);
    int x = (int)(i % nx);
    int y = (int)((i / nx) % ny);
    int z = (int)(i / ((idx_t)nx * ny));
    atomicAdd(&count[k], 1ull);
    atomicMin(&bbox[k * 6 + 0], z);
    atomicMin(&bbox[k * 6 + 1], y);
    atomicMin(&bbox[k * 6 + 2], x);
    atomicMax(&bbox[k * 6 + 3], z);
    atomicMax(&bbox[k * 6 + 4], y);
    atomicMax(&bbox[k * 6 + 5], x);
    atomicAdd(&sums[k * 5 + 0], (double)z);
    atomicAdd(&sums[k * 5 + 1], (double)y);
    atomicAdd(&sums[k * 5 + 2], (double)x);
    if (image) atomicAdd(&sums[k * 5 + 3], (double)image[i]);
    if (prob) atomicAdd(&sums[k * 5 + 4], (double)prob[i]);
    if (classes && n_classes > 0) {
        int c = (int)classes[i];
        if (c < n_classes) atomicAdd(&votes[k * n_classes + c], 1ull);
    }
    long long f = base + (long long)z * sz + (long long)y * sy + (long long)x * sx;
    atomicMin(&first[k], (unsigned long long)f);
}
