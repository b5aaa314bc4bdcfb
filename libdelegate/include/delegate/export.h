// DELEGATE_EXPORT marks the public API: the library is built with hidden
// symbols, and only what is marked is visible from libdelegate.so.
#ifndef DELEGATE_EXPORT_H_
#define DELEGATE_EXPORT_H_

#if defined(__GNUC__) || defined(__clang__)
#define DELEGATE_EXPORT __attribute__((visibility("default")))
#else
#define DELEGATE_EXPORT
#endif

#endif  // DELEGATE_EXPORT_H_
