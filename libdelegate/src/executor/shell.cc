#include "executor/shell.h"

namespace delegate {

std::string ShellQuote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::string CommandScript(const std::vector<std::string>& commands) {
  std::string script = "set -e\n";
  for (const std::string& command : commands) {
    script += "printf '+ %s\\n' " + ShellQuote(command) + "\n" + command + "\n";
  }
  return script;
}

}  // namespace delegate
