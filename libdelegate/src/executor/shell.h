// Turning a step's commands into one /bin/sh script, the same way on every
// executor.
#ifndef DELEGATE_EXECUTOR_SHELL_H_
#define DELEGATE_EXECUTOR_SHELL_H_

#include <string>
#include <string_view>
#include <vector>

namespace delegate {

// `s` in single quotes, safe as one word for /bin/sh.
std::string ShellQuote(std::string_view s);

// "set -e", then each command echoed as "+ command" and run: the script stops
// at the first command that fails, with its status.
std::string CommandScript(const std::vector<std::string>& commands);

}  // namespace delegate

#endif  // DELEGATE_EXECUTOR_SHELL_H_
