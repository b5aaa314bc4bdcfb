#include "config/stage_decoder.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "config/node_reader.h"
#include "config/stage_document.h"
#include "delegate/stage.h"
#include "stage/secrets.h"

namespace delegate::config {
namespace {

// Secret ids listed in an "unknown secret" message.
constexpr size_t kMaxListedSecrets = 20;

constexpr Keys kStageKeys = {"name",    "platform",         "env",
                             "secrets", "volumes",          "steps",
                             "timeout", "reuse_containers", "tags"};
constexpr Keys kRegistryKeys = {"server", "username", "password"};
constexpr Keys kVolumeKeys = {"name", "empty_dir", "host_path", "efs"};
constexpr Keys kEmptyDirKeys = {"size_mib"};
constexpr Keys kHostPathKeys = {"path", "read_only"};
constexpr Keys kEfsKeys = {"filesystem_id", "root_directory",
                           "transit_encryption", "access_point_id", "iam"};
constexpr Keys kStepKeys = {"id",
                            "name",
                            "image",
                            "commands",
                            "entrypoint",
                            "args",
                            "envs",
                            "working_dir",
                            "timeout",
                            "outputs",
                            "security_context",
                            "volume_mounts",
                            "resources",
                            "pull",
                            "registry",
                            "continue_on_error"};
constexpr Keys kSecurityContextKeys = {
    "privileged",     "read_only_root_filesystem",
    "run_as_user",    "run_as_group",
    "add_capability", "drop_capability"};
constexpr Keys kVolumeMountKeys = {"name", "path"};
constexpr Keys kResourcesKeys = {"cpus", "memory_mib"};

// ------------------------------------------------------------ name rules

bool IsAsciiAlnum(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c));
}

// [a-z0-9][a-z0-9_-]*: platform and volume names.
bool IsLowerName(absl::string_view s) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool lower_alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (!lower_alnum && (i == 0 || (c != '_' && c != '-'))) return false;
  }
  return true;
}

// [A-Za-z_][A-Za-z0-9_]*: environment variable names.
bool IsEnvName(absl::string_view s) {
  if (s.empty()) return false;
  if (absl::ascii_isdigit(static_cast<unsigned char>(s[0]))) return false;
  for (char c : s) {
    if (!IsAsciiAlnum(c) && c != '_') return false;
  }
  return true;
}

// [A-Za-z0-9_.-]+: secret ids; step ids add a length limit.
bool IsIdName(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!IsAsciiAlnum(c) && c != '_' && c != '.' && c != '-') return false;
  }
  return true;
}

// [A-Z_]+: capability names once "CAP_" is gone.
bool IsCapabilityName(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!((c >= 'A' && c <= 'Z') || c == '_')) return false;
  }
  return true;
}

// ------------------------------------------------------------ decoder

// Turns a document tree into a Stage, recording every problem it finds and
// carrying on past each one so that a user sees them all at once. The reading
// of typed values is NodeReader's; what is checked here is the stage schema:
// which fields there are, and how they depend on each other (secret
// references, volume mounts, step ids).
class Decoder : private NodeReader {
 public:
  Decoder(const Document& doc, std::vector<Problem>& problems)
      : NodeReader(doc, problems) {}

  Stage DecodeStage(const Node& root);

  // Every value found under `secrets`, valid or not, for masking messages.
  const std::vector<std::string>& secret_values() const {
    return secret_values_;
  }

 private:
  // env and envs: variable name -> text. A scalar is taken as written
  // (true -> "true", 1 -> "1"; a plain empty value is "").
  std::map<std::string, std::string> EnvMap(const Node& n,
                                            const std::string& path) {
    std::map<std::string, std::string> out;
    if (!n.is_mapping()) {
      Error(n, path,
            absl::StrCat("expected a mapping of variable names to values, "
                         "got ",
                         Describe(n)));
      return out;
    }
    std::unordered_map<std::string_view, int> first_line;
    for (const MapEntry& entry : n.entries) {
      const Node& key = doc().node(entry.key);
      const Node& value = doc().node(entry.value);
      const std::string key_path = JoinPath(path, key.text);
      if (auto [it, inserted] = first_line.emplace(key.text, key.line);
          !inserted) {
        Error(key, path,
              absl::StrCat("duplicate key '", QuoteText(key.text),
                           "' (first at line ", it->second, ")"));
        continue;
      }
      if (!IsEnvName(key.text)) {
        Error(key, key_path,
              "invalid variable name: expected letters, digits and '_', not "
              "starting with a digit");
        continue;
      }
      std::optional<std::string> text = String(value, key_path);
      if (!text) continue;
      CheckSecretReferences(value, key_path);
      out[key.text] = *std::move(text);
    }
    return out;
  }

  // Reports each ${{secrets.ID}} in `n`'s text whose ID the stage does not
  // define, by the grammar the scheduler substitutes.
  void CheckSecretReferences(const Node& n, const std::string& path) {
    if (!n.is_scalar()) return;
    ForEachSecretReference(
        std::string_view(n.text.data(), n.text.size()),
        [&](std::string_view id) {
          if (secret_ids_.count(std::string(id)) == 0) {
            UnknownSecret(n, path, absl::string_view(id.data(), id.size()));
          }
        });
  }

  void UnknownSecret(const Node& n, const std::string& path,
                     absl::string_view id) {
    std::string message =
        absl::StrCat("unknown secret '", QuoteText(id), "'; ");
    if (secret_ids_.empty()) {
      absl::StrAppend(&message, "the stage defines no secrets");
    } else {
      std::vector<absl::string_view> ids;
      for (const std::string& known : secret_ids_) {
        if (ids.size() == kMaxListedSecrets) break;
        ids.push_back(known);
      }
      absl::StrAppend(&message,
                      "the stage defines: ", absl::StrJoin(ids, ", "));
      if (secret_ids_.size() > ids.size()) {
        absl::StrAppend(&message, " and ", secret_ids_.size() - ids.size(),
                        " more");
      }
    }
    Error(n, path, std::move(message));
  }

  // A list of strings, each checked for secret references.
  std::optional<std::vector<std::string>> CommandList(const Node& n,
                                                      const std::string& path) {
    std::optional<std::vector<std::string>> list = StringList(n, path);
    if (list) {
      for (size_t i = 0; i < n.items.size(); ++i) {
        CheckSecretReferences(doc().node(n.items[i]), IndexPath(path, i));
      }
    }
    return list;
  }

  std::map<std::string, std::string> Secrets(const Node& n);
  std::optional<Volume> DecodeVolume(const Node& n, const std::string& path);
  std::optional<Step> DecodeStep(const Node& n, const std::string& path,
                                 const Stage& stage);
  SecurityContext DecodeSecurityContext(const Node& n, const std::string& path);
  std::vector<std::string> Capabilities(const Node& n, const std::string& path);
  std::vector<VolumeMount> VolumeMounts(const Node& n, const std::string& path,
                                        const Stage& stage);
  Resources DecodeResources(const Node& n, const std::string& path);
  std::optional<PullPolicy> Pull(const Node& n, const std::string& path);

  std::set<std::string> secret_ids_;
  std::vector<std::string> secret_values_;
  // Step ids seen so far, with the path of the step that has each.
  std::map<std::string, std::string> step_ids_;
  // Every volume name given, valid or not, so that a mount of a volume with
  // a bad definition is not reported a second time.
  std::set<std::string> volume_names_;
};

std::map<std::string, std::string> Decoder::Secrets(const Node& n) {
  std::map<std::string, std::string> out;
  // Never Describe() a scalar here: it would put a value in the message.
  if (!n.is_mapping()) {
    Error(n, "secrets",
          absl::StrCat("expected a mapping of secret ids to values, got ",
                       n.is_sequence() ? "a list" : "a scalar"));
    if (n.is_scalar()) secret_values_.push_back(n.text);
    return out;
  }
  for (const MapEntry& entry : n.entries) {
    const Node& key = doc().node(entry.key);
    const Node& value = doc().node(entry.value);
    const std::string path = JoinPath("secrets", key.text);
    if (value.is_scalar()) secret_values_.push_back(value.text);
    if (out.count(key.text) != 0) {
      Error(key, "secrets",
            absl::StrCat("duplicate key '", QuoteText(key.text), "'"));
      continue;
    }
    if (!IsIdName(key.text)) {
      Error(key, path,
            "invalid secret id: expected letters, digits, '_', '.' or '-'");
      continue;
    }
    if (!value.is_scalar()) {
      Error(value, path,
            absl::StrCat("expected a string value, got ",
                         value.is_mapping() ? "a mapping" : "a list"));
      continue;
    }
    if (absl::StrContains(value.text, absl::string_view("\0", 1))) {
      Error(value, path, "the value contains a NUL character");
      continue;
    }
    out[key.text] = value.text;
  }
  return out;
}

std::optional<Volume> Decoder::DecodeVolume(const Node& n,
                                            const std::string& path) {
  std::optional<Fields> f = Mapping(n, path, kVolumeKeys);
  if (!f) return std::nullopt;
  Volume volume;
  bool ok = true;
  if (const Node* name = f->Get("name")) {
    const std::string name_path = f->PathOf("name");
    if (std::optional<std::string> s = String(*name, name_path)) {
      if (!IsLowerName(*s)) {
        Error(*name, name_path,
              absl::StrCat("expected a volume name of lower-case letters, "
                           "digits, '_' and '-', got ",
                           Describe(*name)));
        ok = false;
      }
      volume.name = *s;
    } else {
      ok = false;
    }
  } else {
    Missing(*f, "name");
    ok = false;
  }

  std::vector<absl::string_view> sources;
  for (absl::string_view key : {"empty_dir", "host_path", "efs"}) {
    if (f->GetEvenNull(key) != nullptr) sources.push_back(key);
  }
  if (sources.size() != 1) {
    Error(n, path,
          absl::StrCat(sources.empty() ? "no volume source"
                                       : absl::StrCat("has both ", sources[0],
                                                      " and ", sources[1]),
                       "; expected exactly one of empty_dir, host_path, efs"));
    return std::nullopt;
  }
  const std::string source_path = f->PathOf(sources[0]);
  const Node& source = *f->GetEvenNull(sources[0]);
  if (sources[0] == "empty_dir") {
    EmptyDirVolume empty_dir;
    // `empty_dir:` with nothing after it is the natural YAML for {}.
    if (!source.is_null()) {
      std::optional<Fields> g = Mapping(source, source_path, kEmptyDirKeys);
      if (!g) return std::nullopt;
      if (const Node* size = g->Get("size_mib")) {
        empty_dir.size_mib =
            Int(*size, g->PathOf("size_mib"), 1, "a positive integer");
        if (!empty_dir.size_mib) ok = false;
      }
    }
    volume.source = empty_dir;
  } else if (sources[0] == "host_path") {
    std::optional<Fields> g = Mapping(source, source_path, kHostPathKeys);
    if (!g) return std::nullopt;
    HostPathVolume host_path;
    if (const Node* p = g->Get("path")) {
      if (std::optional<std::string> s = String(*p, g->PathOf("path"))) {
        if (!absl::StartsWith(*s, "/")) {
          Error(*p, g->PathOf("path"),
                absl::StrCat("expected an absolute path, got ", Describe(*p)));
          ok = false;
        }
        host_path.path = *s;
      } else {
        ok = false;
      }
    } else {
      Missing(*g, "path");
      ok = false;
    }
    if (const Node* ro = g->Get("read_only")) {
      std::optional<bool> b = Bool(*ro, g->PathOf("read_only"));
      if (b) host_path.read_only = *b;
      ok = ok && b.has_value();
    }
    volume.source = host_path;
  } else {
    std::optional<Fields> g = Mapping(source, source_path, kEfsKeys);
    if (!g) return std::nullopt;
    EfsVolume efs;
    if (const Node* id = g->Get("filesystem_id")) {
      std::optional<std::string> s =
          NonEmptyString(*id, g->PathOf("filesystem_id"));
      if (s) efs.filesystem_id = *s;
      ok = ok && s.has_value();
    } else {
      Missing(*g, "filesystem_id");
      ok = false;
    }
    for (auto [key, field] :
         {std::pair{"root_directory", &efs.root_directory},
          std::pair{"access_point_id", &efs.access_point_id}}) {
      if (const Node* v = g->Get(key)) {
        std::optional<std::string> s = String(*v, g->PathOf(key));
        if (s) *field = *s;
        ok = ok && s.has_value();
      }
    }
    for (auto [key, field] :
         {std::pair{"transit_encryption", &efs.transit_encryption},
          std::pair{"iam", &efs.iam}}) {
      if (const Node* v = g->Get(key)) {
        std::optional<bool> b = Bool(*v, g->PathOf(key));
        if (b) *field = *b;
        ok = ok && b.has_value();
      }
    }
    volume.source = efs;
  }
  if (!ok) return std::nullopt;
  return volume;
}

std::vector<std::string> Decoder::Capabilities(const Node& n,
                                               const std::string& path) {
  std::vector<std::string> out;
  std::optional<std::vector<std::string>> list = StringList(n, path);
  if (!list) return out;
  for (size_t i = 0; i < list->size(); ++i) {
    absl::string_view name = (*list)[i];
    if (absl::StartsWith(name, "CAP_") && name.size() > 4) {
      name.remove_prefix(4);
    }
    if (!IsCapabilityName(name)) {
      Error(doc().node(n.items[i]), IndexPath(path, i),
            absl::StrCat("expected a capability name like NET_ADMIN or ALL, "
                         "got ",
                         Describe(doc().node(n.items[i]))));
      continue;
    }
    out.emplace_back(name);
  }
  return out;
}

SecurityContext Decoder::DecodeSecurityContext(const Node& n,
                                               const std::string& path) {
  SecurityContext sc;
  std::optional<Fields> f = Mapping(n, path, kSecurityContextKeys);
  if (!f) return sc;
  if (const Node* v = f->Get("privileged")) {
    sc.privileged = Bool(*v, f->PathOf("privileged"));
  }
  if (const Node* v = f->Get("read_only_root_filesystem")) {
    sc.read_only_root_filesystem =
        Bool(*v, f->PathOf("read_only_root_filesystem"));
  }
  if (const Node* v = f->Get("run_as_user")) {
    sc.run_as_user = Int(*v, f->PathOf("run_as_user"), 0, "an integer >= 0");
  }
  if (const Node* v = f->Get("run_as_group")) {
    sc.run_as_group = Int(*v, f->PathOf("run_as_group"), 0, "an integer >= 0");
  }
  if (const Node* v = f->Get("add_capability")) {
    sc.add_capability = Capabilities(*v, f->PathOf("add_capability"));
  }
  if (const Node* v = f->Get("drop_capability")) {
    sc.drop_capability = Capabilities(*v, f->PathOf("drop_capability"));
  }
  return sc;
}

std::vector<VolumeMount> Decoder::VolumeMounts(const Node& n,
                                               const std::string& path,
                                               const Stage& stage) {
  std::vector<VolumeMount> out;
  if (!n.is_sequence()) {
    Error(n, path,
          absl::StrCat("expected a list of {name, path} mappings, got ",
                       Describe(n)));
    return out;
  }
  for (size_t i = 0; i < n.items.size(); ++i) {
    const std::string item_path = IndexPath(path, i);
    std::optional<Fields> f =
        Mapping(doc().node(n.items[i]), item_path, kVolumeMountKeys);
    if (!f) continue;
    VolumeMount mount;
    if (const Node* name = f->Get("name")) {
      if (std::optional<std::string> s = String(*name, f->PathOf("name"))) {
        mount.name = *s;
        if (volume_names_.count(*s) == 0) {
          std::vector<absl::string_view> names;
          for (const Volume& v : stage.volumes) names.push_back(v.name);
          Error(*name, f->PathOf("name"),
                absl::StrCat(
                    "no volume named '", QuoteText(*s), "' in this stage",
                    names.empty()
                        ? std::string(" (it defines no volumes)")
                        : absl::StrCat(
                              " (volumes: ", absl::StrJoin(names, ", "), ")")));
        }
      }
    } else {
      Missing(*f, "name");
    }
    if (const Node* p = f->Get("path")) {
      if (std::optional<std::string> s =
              NonEmptyString(*p, f->PathOf("path"))) {
        mount.path = *s;
      }
    } else {
      Missing(*f, "path");
    }
    out.push_back(std::move(mount));
  }
  return out;
}

Resources Decoder::DecodeResources(const Node& n, const std::string& path) {
  Resources r;
  std::optional<Fields> f = Mapping(n, path, kResourcesKeys);
  if (!f) return r;
  if (const Node* v = f->Get("cpus"))
    r.cpus = PositiveNumber(*v, f->PathOf("cpus"));
  if (const Node* v = f->Get("memory_mib")) {
    r.memory_mib = Int(*v, f->PathOf("memory_mib"), 1, "a positive integer");
  }
  return r;
}

std::optional<PullPolicy> Decoder::Pull(const Node& n,
                                        const std::string& path) {
  if (n.is_scalar()) {
    // always, if-not-present, if_not_present, IfNotPresent, Never, ...
    const std::string squashed = Squash(n.text);
    if (squashed == "always") return PullPolicy::kAlways;
    if (squashed == "ifnotpresent") return PullPolicy::kIfNotPresent;
    if (squashed == "never") return PullPolicy::kNever;
  }
  Error(n, path,
        absl::StrCat("expected one of always, if-not-present, never, got ",
                     Describe(n)));
  return std::nullopt;
}

std::optional<Step> Decoder::DecodeStep(const Node& n, const std::string& path,
                                        const Stage& stage) {
  std::optional<Fields> f = Mapping(n, path, kStepKeys);
  if (!f) return std::nullopt;
  Step step;
  const size_t problems_before = problem_count();

  if (const Node* id = f->Get("id")) {
    const std::string id_path = f->PathOf("id");
    if (std::optional<std::string> s = String(*id, id_path)) {
      if (!IsIdName(*s) || s->size() > 128) {
        Error(*id, id_path,
              absl::StrCat("expected an id of 1 to 128 letters, digits, '_', "
                           "'.' or '-', got ",
                           Describe(*id)));
      } else if (auto [it, inserted] = step_ids_.emplace(*s, path); !inserted) {
        Error(*id, id_path,
              absl::StrCat("duplicate step id '", *s, "' (first at ",
                           it->second, ")"));
      }
      step.id = *s;
    }
  } else {
    Missing(*f, "id");
  }
  if (const Node* v = f->Get("name")) {
    if (std::optional<std::string> s = String(*v, f->PathOf("name"))) {
      step.name = *s;
    }
  }
  if (step.name.empty()) step.name = step.id;
  if (const Node* v = f->Get("image")) {
    if (std::optional<std::string> s = String(*v, f->PathOf("image"))) {
      step.image = *s;
    }
  }

  const Node* commands = f->Get("commands");
  const Node* entrypoint = f->Get("entrypoint");
  const Node* args = f->Get("args");
  if (commands != nullptr) {
    const std::string p = f->PathOf("commands");
    if (auto list = CommandList(*commands, p)) {
      if (list->empty()) Error(*commands, p, "expected at least one command");
      step.commands = *std::move(list);
    }
  }
  if (entrypoint != nullptr) {
    const std::string p = f->PathOf("entrypoint");
    if (entrypoint->is_scalar()) {
      // A single string is the whole entrypoint, not split on spaces.
      if (std::optional<std::string> s = String(*entrypoint, p)) {
        CheckSecretReferences(*entrypoint, p);
        step.entrypoint.push_back(*s);
      }
    } else if (auto list = CommandList(*entrypoint, p)) {
      if (list->empty()) Error(*entrypoint, p, "expected at least one string");
      step.entrypoint = *std::move(list);
    }
  }
  if (args != nullptr) {
    if (auto list = CommandList(*args, f->PathOf("args"))) {
      step.args = *std::move(list);
    }
  }
  if (commands != nullptr && entrypoint != nullptr) {
    Error(n, path,
          "has both commands and entrypoint; give commands (run by /bin/sh) "
          "or an entrypoint with optional args (run as is), not both");
  } else if (commands == nullptr && entrypoint == nullptr) {
    Error(n, path,
          "needs commands, or an entrypoint with optional args; it has "
          "neither");
  }
  if (args != nullptr && entrypoint == nullptr) {
    Error(*args, f->PathOf("args"),
          "args need an entrypoint (with commands, write the arguments into "
          "the command)");
  }

  if (const Node* v = f->Get("envs")) step.envs = EnvMap(*v, f->PathOf("envs"));
  if (const Node* v = f->Get("working_dir")) {
    if (std::optional<std::string> s = String(*v, f->PathOf("working_dir"))) {
      step.working_dir = *s;
    }
  }
  if (const Node* v = f->Get("timeout")) {
    step.timeout = Duration(*v, f->PathOf("timeout"));
  }
  if (const Node* v = f->Get("outputs")) {
    const std::string p = f->PathOf("outputs");
    if (auto list = StringList(*v, p)) {
      for (size_t i = 0; i < list->size(); ++i) {
        const Node& item = doc().node(v->items[i]);
        if (!IsEnvName((*list)[i])) {
          Error(item, IndexPath(p, i),
                absl::StrCat("expected a variable name (letters, digits and "
                             "'_', not starting with a digit), got ",
                             Describe(item)));
        }
      }
      step.outputs = *std::move(list);
    }
  }
  if (const Node* v = f->Get("security_context")) {
    step.security_context =
        DecodeSecurityContext(*v, f->PathOf("security_context"));
  }
  if (const Node* v = f->Get("volume_mounts")) {
    step.volume_mounts = VolumeMounts(*v, f->PathOf("volume_mounts"), stage);
  }
  if (const Node* v = f->Get("resources")) {
    step.resources = DecodeResources(*v, f->PathOf("resources"));
  }
  if (const Node* v = f->Get("pull")) {
    if (std::optional<PullPolicy> p = Pull(*v, f->PathOf("pull"))) {
      step.pull = *p;
    }
  }
  if (const Node* v = f->Get("continue_on_error")) {
    if (std::optional<bool> b = Bool(*v, f->PathOf("continue_on_error"))) {
      step.continue_on_error = *b;
    }
  }
  if (const Node* v = f->Get("registry")) {
    const std::string p = f->PathOf("registry");
    if (std::optional<Fields> r = Mapping(*v, p, kRegistryKeys)) {
      RegistryCredentials creds;
      auto field = [&](const char* key, std::string& out, bool required) {
        const Node* node = r->Get(key);
        if (node == nullptr) {
          if (required) Missing(*r, key);
          return;
        }
        if (std::optional<std::string> s = String(*node, r->PathOf(key))) {
          CheckSecretReferences(*node, r->PathOf(key));
          out = *s;
        }
      };
      field("server", creds.server, false);
      field("username", creds.username, true);
      field("password", creds.password, true);
      step.registry = std::move(creds);
    }
  }
  if (problem_count() != problems_before) return std::nullopt;
  return step;
}

Stage Decoder::DecodeStage(const Node& root) {
  Stage stage;
  if (!root.is_mapping()) {
    Error(root, "",
          absl::StrCat("expected a mapping with the stage's fields (name, "
                       "steps, ...) at the top level, got ",
                       Describe(root)));
    return stage;
  }
  Fields f(*this, root, "", kStageKeys);
  // Secrets first: env and steps are checked against them.
  if (const Node* v = f.Get("secrets")) {
    stage.secrets = Secrets(*v);
    for (const auto& [id, value] : stage.secrets) secret_ids_.insert(id);
  }
  if (const Node* v = f.Get("name")) {
    if (std::optional<std::string> s = NonEmptyString(*v, "name")) {
      stage.name = *s;
    }
  } else {
    Missing(f, "name");
  }
  if (const Node* v = f.Get("platform")) {
    if (std::optional<std::string> s = String(*v, "platform")) {
      if (IsLowerName(*s)) {
        stage.platform = *s;
      } else {
        Error(*v, "platform",
              absl::StrCat("expected a platform name like host, docker, "
                           "ecs-ec2 or ecs-fargate (lower-case letters, "
                           "digits, '_' and '-'), got ",
                           Describe(*v)));
      }
    }
  }
  if (const Node* v = f.Get("env")) stage.env = EnvMap(*v, "env");
  if (const Node* v = f.Get("timeout")) stage.timeout = Duration(*v, "timeout");
  if (const Node* v = f.Get("reuse_containers")) {
    if (std::optional<bool> b = Bool(*v, "reuse_containers")) {
      stage.reuse_containers = *b;
    }
  }
  if (const Node* v = f.Get("tags")) {
    if (auto list = StringList(*v, "tags")) stage.tags = std::move(*list);
  }

  if (const Node* v = f.Get("volumes")) {
    if (!v->is_sequence()) {
      Error(*v, "volumes",
            absl::StrCat("expected a list of volumes, got ", Describe(*v)));
    } else {
      std::map<std::string, std::string> first_at;
      for (size_t i = 0; i < v->items.size(); ++i) {
        const Node& item = doc().node(v->items[i]);
        const std::string path = IndexPath("volumes", i);
        std::optional<Volume> volume = DecodeVolume(item, path);
        // The name counts even when the rest is wrong, so that mounts of it
        // do not add a second, misleading error.
        const Node* name_node = nullptr;
        if (item.is_mapping()) {
          for (const MapEntry& e : item.entries) {
            if (doc().node(e.key).text == "name") {
              name_node = &doc().node(e.value);
              break;
            }
          }
        }
        if (name_node != nullptr && name_node->is_scalar() &&
            !name_node->is_null()) {
          const std::string& name = name_node->text;
          volume_names_.insert(name);
          if (auto [it, inserted] = first_at.emplace(name, path); !inserted) {
            Error(*name_node, JoinPath(path, "name"),
                  absl::StrCat("duplicate volume name '", QuoteText(name),
                               "' (first at ", it->second, ")"));
            volume.reset();
          }
        }
        if (volume) stage.volumes.push_back(*std::move(volume));
      }
    }
  }

  if (const Node* v = f.Get("steps")) {
    if (!v->is_sequence()) {
      Error(*v, "steps",
            absl::StrCat("expected a list of steps, got ", Describe(*v)));
    } else if (v->items.empty()) {
      Error(*v, "steps", "a stage needs at least one step");
    } else {
      for (size_t i = 0; i < v->items.size(); ++i) {
        std::optional<Step> step =
            DecodeStep(doc().node(v->items[i]), IndexPath("steps", i), stage);
        if (step) stage.steps.push_back(*std::move(step));
      }
    }
  } else {
    Missing(f, "steps", " (a stage needs at least one step)");
  }
  return stage;
}

}  // namespace

DecodedStage DecodeStage(const Document& doc) {
  DecodedStage out;
  Decoder decoder(doc, out.problems);
  out.stage = decoder.DecodeStage(doc.node(doc.root));
  out.secret_values = decoder.secret_values();
  return out;
}

}  // namespace delegate::config
