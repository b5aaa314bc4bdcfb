#include "manager/harness/registration.h"

#include "manager/harness/json_fields.h"
#include "rapidjson/document.h"
#include "util/json.h"

namespace delegate::harness {
namespace {

using json::Key;
using json::String;

}  // namespace

std::string RegisterRequestJson(const RegisterInfo& info) {
  return WriteObject([&](json::Writer& w) {
    Key(w, "accountId");
    String(w, info.account_id);
    Key(w, "delegateName");
    String(w, info.delegate_name);
    Key(w, "lastHeartBeat");
    w.Int64(absl::ToUnixMillis(info.now));
    if (!info.delegate_id.empty()) {
      Key(w, "delegateId");
      String(w, info.delegate_id);
    }
    Key(w, "delegateType");
    String(w, "DOCKER");
    Key(w, "ng");
    w.Bool(true);
    Key(w, "pollingModeEnabled");
    w.Bool(true);
    Key(w, "hostName");
    String(w, info.host_name);
    Key(w, "ip");
    String(w, info.ip);
    Key(w, "tags");
    w.StartArray();
    for (const std::string& tag : info.tags) {
      if (!tag.empty()) String(w, tag);
    }
    w.EndArray();
    Key(w, "heartbeatAsObject");
    w.Bool(true);
    Key(w, "version");
    String(w, info.version);
    Key(w, "capacityConfig");
    w.StartObject();
    Key(w, "maxStages");
    if (info.max_stages) {
      w.Int(*info.max_stages);
    } else {
      w.Null();
    }
    w.EndObject();
    Key(w, "runner");
    w.Bool(true);
  });
}

std::string UnregisterRequestJson(const RegisterInfo& info) {
  return WriteObject([&](json::Writer& w) {
    Key(w, "delegateId");
    String(w, info.delegate_id);
    Key(w, "hostName");
    String(w, info.host_name);
    Key(w, "ng");
    w.Bool(true);
    Key(w, "delegateType");
    String(w, "DOCKER");
    Key(w, "ipAddress");
    String(w, info.ip);
  });
}

absl::StatusOr<std::string> ParseRegisterResponse(std::string_view body) {
  rapidjson::Document doc;
  absl::StatusOr<Fields> top = ParseBody(body, "register response", doc);
  if (!top.ok()) return top.status();
  absl::StatusOr<std::optional<Fields>> resource = top->Object("resource");
  if (!resource.ok()) return resource.status();
  std::string id;
  if (*resource) {
    if (absl::Status s = (*resource)->String("delegateId", id); !s.ok()) {
      return s;
    }
  }
  if (id.empty()) {
    return Invalid("resource.delegateId",
                   "missing from the register response; the manager did not "
                   "accept the registration");
  }
  return id;
}

}  // namespace delegate::harness
