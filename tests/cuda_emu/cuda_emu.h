// CUDA on the host, for tests: the kernels' unchanged .cu sources compile with g++ against this header.
//
// What it maps: the qualifiers (__global__, __device__) to nothing; threadIdx, blockIdx, blockDim and
// gridDim to globals the scheduler sets before it resumes a thread; the atomics we use (atomicMin,
// atomicMax, atomicAdd, atomicCAS, atomicExch) to plain operations preceded by a switch point.
// How it runs a grid (emu_run_grid): blocks in a seeded random order, EMU_RESIDENT (4) of them resident at
// once; every thread is a fiber (ucontext) with its own stack, and the scheduler resumes a random
// unfinished thread of a random resident block each time. In mode 1 a thread gives up the processor at
// every atomic, so another thread's atomics can land between its read of a root and its atomicMin on it:
// the interleavings that break a union-find whose author forgot to check an atomic's result. Mode 0 runs
// each thread to its end (threads in random order). Mode 2 also switches at every plain load and store
// (see EMU_PLAIN_HOOKS at the end), for races between a plain read and a later write. __syncthreads is a
// barrier in every mode: a thread that reaches it waits (is not resumed) until every unfinished thread of
// its block has reached it too. There is no shared memory: lnrt's kernels share through global memory.
// A test tool, never the product's path (tests/cuda_emu/__init__.py loads the result with ctypes).
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#ifdef EMU_PLAIN_HOOKS
// the scheduler itself must not be instrumented (its loads and stores would switch threads)
#define EMU_NOSAN __attribute__((no_sanitize_thread))
#else
#define EMU_NOSAN
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct emu_dim3 {
    unsigned int x, y, z;
};
static emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

struct EmuFiber {
    ucontext_t ctx;
    std::vector<char> stack;
    unsigned int tid;
    bool done;
    bool waiting;  // at a __syncthreads barrier
};

static ucontext_t emu_scheduler;
static EmuFiber* emu_current = nullptr;
static int emu_mode = 0;
static unsigned long long emu_switches = 0;
static std::function<void()> emu_body;
static bool emu_in_fiber = false;  // true while a kernel thread runs (cleared first thing on return)

EMU_NOSAN static inline void emu_yield() {
    if (emu_mode && emu_current) {
        ++emu_switches;
        swapcontext(&emu_current->ctx, &emu_scheduler);
    }
}

EMU_NOSAN static void emu_fiber_entry() {
    emu_body();
    emu_current->done = true;
    swapcontext(&emu_current->ctx, &emu_scheduler);
}

// Up to EMU_RESIDENT blocks are resident at once (a GPU runs many blocks side by side): their threads
// are interleaved with each other, and a finished block's place goes to the next block in the order.
#ifndef EMU_RESIDENT
#define EMU_RESIDENT 4
#endif

struct EmuBlock {
    unsigned int id;
    std::vector<EmuFiber> fibers;
    std::vector<unsigned int> live;
    size_t waiting = 0;  // live threads at the barrier
};

EMU_NOSAN static void emu_start_block(EmuBlock& blk, unsigned int id, unsigned int block, size_t stack_size) {
    blk.id = id;
    blk.fibers.resize(block);
    blk.live.resize(block);
    blk.waiting = 0;
    for (unsigned int t = 0; t < block; ++t) {
        EmuFiber& f = blk.fibers[t];
        f.stack.resize(stack_size);
        f.tid = t;
        f.done = false;
        f.waiting = false;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.data();
        f.ctx.uc_stack.ss_size = stack_size;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, emu_fiber_entry, 0);
        blk.live[t] = t;
    }
}

EMU_NOSAN static void emu_run_grid(unsigned int grid, unsigned int block, unsigned long long seed, int mode,
                         std::function<void()> body) {
    const size_t stack_size = 32 * 1024;
    std::mt19937_64 rng(seed);
    std::vector<unsigned int> order(grid);
    for (unsigned int b = 0; b < grid; ++b) order[b] = b;
    std::shuffle(order.begin(), order.end(), rng);
    emu_mode = mode;
    emu_body = body;
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    std::vector<EmuBlock> resident(std::min<unsigned int>(EMU_RESIDENT, grid));
    size_t next = 0, active = 0;
    for (auto& blk : resident) {
        emu_start_block(blk, order[next++], block, stack_size);
        ++active;
    }
    while (active) {
        size_t r = (size_t)(rng() % resident.size());
        EmuBlock& blk = resident[r];
        if (blk.live.empty()) continue;
        if (blk.waiting == blk.live.size()) {  // every live thread is at the barrier: release them
            for (unsigned int t : blk.live) blk.fibers[t].waiting = false;
            blk.waiting = 0;
        }
        size_t pick = (size_t)(rng() % blk.live.size());
        EmuFiber& f = blk.fibers[blk.live[pick]];
        if (f.waiting) continue;
        blockIdx = {blk.id, 0, 0};
        threadIdx = {f.tid, 0, 0};
        emu_current = &f;
        emu_in_fiber = true;
        swapcontext(&emu_scheduler, &f.ctx);
        emu_in_fiber = false;
        emu_current = nullptr;
        if (f.waiting) ++blk.waiting;
        if (!f.done) continue;
        blk.live[pick] = blk.live.back();
        blk.live.pop_back();
        if (blk.live.empty()) {
            if (next < order.size()) emu_start_block(blk, order[next++], block, stack_size);
            else --active;
        }
    }
}

// __syncthreads: wait at the block's barrier (the scheduler releases it once all live threads are there)
EMU_NOSAN static inline void __syncthreads() {
    if (!emu_current) return;
    emu_current->waiting = true;
    ++emu_switches;
    swapcontext(&emu_current->ctx, &emu_scheduler);
}

// CUDA's bit casts between double and long long
EMU_NOSAN static inline long long __double_as_longlong(double v) {
    long long b;
    std::memcpy(&b, &v, sizeof b);
    return b;
}
EMU_NOSAN static inline double __longlong_as_double(long long b) {
    double v;
    std::memcpy(&v, &b, sizeof v);
    return v;
}

template <class T>
EMU_NOSAN static inline T atomicMin(T* p, T v) {
    emu_yield();
    T old = *p;
    if (v < old) *p = v;
    return old;
}
template <class T>
EMU_NOSAN static inline T atomicMax(T* p, T v) {
    emu_yield();
    T old = *p;
    if (v > old) *p = v;
    return old;
}
template <class T>
EMU_NOSAN static inline T atomicAdd(T* p, T v) {
    emu_yield();
    T old = *p;
    *p = old + v;
    return old;
}
template <class T>
EMU_NOSAN static inline T atomicCAS(T* p, T compare, T v) {
    emu_yield();
    T old = *p;
    if (old == compare) *p = v;
    return old;
}
template <class T>
EMU_NOSAN static inline T atomicExch(T* p, T v) {
    emu_yield();
    T old = *p;
    *p = v;
    return old;
}

#ifdef EMU_PLAIN_HOOKS
// Mode 2: a switch point at every plain load and store too (not inside the atomics above, which are
// EMU_NOSAN: an atomic is one step, with its switch point before it). The kernel source is compiled with GCC's
// -fsanitize=thread instrumentation, which calls these hooks before each memory access; they are defined
// here instead of the ThreadSanitizer runtime (which is never linked), and only switch threads.
EMU_NOSAN static void emu_plain() {
    if (emu_in_fiber && emu_mode == 2 && emu_current) {
        ++emu_switches;
        swapcontext(&emu_current->ctx, &emu_scheduler);
    }
}
extern "C" {
EMU_NOSAN void __tsan_init() {}
EMU_NOSAN void __tsan_func_entry(void*) {}
EMU_NOSAN void __tsan_func_exit() {}
EMU_NOSAN void __tsan_vptr_update(void**, void*) {}
EMU_NOSAN void __tsan_vptr_read(void**) {}
EMU_NOSAN void __tsan_read_range(void*, unsigned long) { emu_plain(); }
EMU_NOSAN void __tsan_write_range(void*, unsigned long) { emu_plain(); }
#define EMU_HOOK(n)                                               \
    EMU_NOSAN void __tsan_read##n(void*) { emu_plain(); }           \
    EMU_NOSAN void __tsan_write##n(void*) { emu_plain(); }          \
    EMU_NOSAN void __tsan_unaligned_read##n(void*) { emu_plain(); } \
    EMU_NOSAN void __tsan_unaligned_write##n(void*) { emu_plain(); }
EMU_HOOK(1)
EMU_HOOK(2)
EMU_HOOK(4)
EMU_HOOK(8)
EMU_HOOK(16)
}
#endif

