// Every executor that ships with the library, for a host program that wants
// them all (target delegate::delegate). Each has a header of its own for
// programs that link only its target.
#ifndef DELEGATE_BUILTIN_EXECUTORS_H_
#define DELEGATE_BUILTIN_EXECUTORS_H_

#include "delegate/docker_executor.h"
#include "delegate/ecs_executor.h"
#include "delegate/host_executor.h"

#endif  // DELEGATE_BUILTIN_EXECUTORS_H_
