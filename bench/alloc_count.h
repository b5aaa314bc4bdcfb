// Heap allocations counted between Start and Stop (bench/alloc_count.cc
// replaces operator new in the benchmark binary).
#ifndef DELEGATE_BENCH_ALLOC_COUNT_H_
#define DELEGATE_BENCH_ALLOC_COUNT_H_

#include <cstdint>

namespace delegate::bench {

void StartCountingAllocations();
// The operator new calls of every thread since Start.
int64_t StopCountingAllocations();

}  // namespace delegate::bench

#endif  // DELEGATE_BENCH_ALLOC_COUNT_H_
