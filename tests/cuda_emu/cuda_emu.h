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
// each thread to its end (threads in random order). There is no __syncthreads and no shared memory here:
// lnrt's kernels use neither.
// A test tool, never the product's path (tests/cuda_emu/__init__.py loads the result with ctypes).
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

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
};

static ucontext_t emu_scheduler;
static EmuFiber* emu_current = nullptr;
static int emu_mode = 0;
static unsigned long long emu_switches = 0;
static std::function<void()> emu_body;

static inline void emu_yield() {
    if (emu_mode && emu_current) {
        ++emu_switches;
        swapcontext(&emu_current->ctx, &emu_scheduler);
    }
}

static void emu_fiber_entry() {
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
};

static void emu_start_block(EmuBlock& blk, unsigned int id, unsigned int block, size_t stack_size) {
    blk.id = id;
    blk.fibers.resize(block);
    blk.live.resize(block);
    for (unsigned int t = 0; t < block; ++t) {
        EmuFiber& f = blk.fibers[t];
        f.stack.resize(stack_size);
        f.tid = t;
        f.done = false;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.data();
        f.ctx.uc_stack.ss_size = stack_size;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, emu_fiber_entry, 0);
        blk.live[t] = t;
    }
}

static void emu_run_grid(unsigned int grid, unsigned int block, unsigned long long seed, int mode,
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
        size_t pick = (size_t)(rng() % blk.live.size());
        EmuFiber& f = blk.fibers[blk.live[pick]];
        blockIdx = {blk.id, 0, 0};
        threadIdx = {f.tid, 0, 0};
        emu_current = &f;
        swapcontext(&emu_scheduler, &f.ctx);
        emu_current = nullptr;
        if (!f.done) continue;
        blk.live[pick] = blk.live.back();
        blk.live.pop_back();
        if (blk.live.empty()) {
            if (next < order.size()) emu_start_block(blk, order[next++], block, stack_size);
            else --active;
        }
    }
}

template <class T>
static inline T atomicMin(T* p, T v) {
    emu_yield();
    T old = *p;
    if (v < old) *p = v;
    return old;
}
template <class T>
static inline T atomicMax(T* p, T v) {
    emu_yield();
    T old = *p;
    if (v > old) *p = v;
    return old;
}
template <class T>
static inline T atomicAdd(T* p, T v) {
    emu_yield();
    T old = *p;
    *p = old + v;
    return old;
}
template <class T>
static inline T atomicCAS(T* p, T compare, T v) {
    emu_yield();
    T old = *p;
    if (old == compare) *p = v;
    return old;
}
template <class T>
static inline T atomicExch(T* p, T v) {
    emu_yield();
    T old = *p;
    *p = v;
    return old;
}
