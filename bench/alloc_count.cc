// Counts heap allocations, for the benchmarks that report allocations per
// operation (BM_SchedulerAllocations). Off unless a benchmark turns it on:
// then every operator new in the process adds one to a shared counter.
#include "alloc_count.h"

#include <atomic>
#include <cstdlib>
#include <new>

namespace delegate::bench {
namespace {
std::atomic<bool> counting{false};
std::atomic<int64_t> allocations{0};
}  // namespace

void StartCountingAllocations() {
  allocations.store(0, std::memory_order_relaxed);
  counting.store(true, std::memory_order_release);
}

int64_t StopCountingAllocations() {
  counting.store(false, std::memory_order_release);
  return allocations.load(std::memory_order_relaxed);
}

}  // namespace delegate::bench

namespace {
void* Allocate(size_t size) {
  if (delegate::bench::counting.load(std::memory_order_relaxed)) {
    delegate::bench::allocations.fetch_add(1, std::memory_order_relaxed);
  }
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
}  // namespace

void* operator new(size_t size) { return Allocate(size); }
void* operator new[](size_t size) { return Allocate(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
