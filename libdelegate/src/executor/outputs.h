// Output variables: what a step writes to $HARNESS_OUTPUT_FILE.
#ifndef DELEGATE_EXECUTOR_OUTPUTS_H_
#define DELEGATE_EXECUTOR_OUTPUTS_H_

#include <map>
#include <string>
#include <string_view>

namespace delegate {

// KEY=VALUE lines; an optional "export " is dropped, a trailing "\r" too;
// lines without '=' are skipped; a later line wins.
std::map<std::string, std::string> ParseOutputs(std::string_view text);

}  // namespace delegate

#endif  // DELEGATE_EXECUTOR_OUTPUTS_H_
