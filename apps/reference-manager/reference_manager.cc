#include "reference_manager.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "manager/harness/payloads.h"
#include "manager/harness/token.h"
#include "rapidjson/document.h"
#include "rapidjson/stringbuffer.h"
#include "rapidjson/writer.h"
#include "util/strings.h"

namespace delegate::reference {

using harness::Base64Decode;
using harness::Base64Encode;

struct ReferenceManager::TaskRecord {
  std::string id;
  std::string type;
  std::string stage_id;
  std::string data_json;
  int step = -1;                 // local_execute: index into the spec's steps
  std::string state = "queued";  // queued, delivered, answered
  std::string delegate_id;       // who fetched it
  std::string code;              // OK / FAILED
  std::string error;
  std::string response_data;  // decoded data JSON
  int responses = 0;          // task-response calls for it
  int deliveries = 0;         // request fetches
  absl::Time queued_at = absl::Now();
  absl::Time answered_at = absl::InfinitePast();
};

struct ReferenceManager::StageRecord {
  std::string id;
  std::string spec_json;
  std::vector<std::string> steps;  // StartStepRequest JSON each
  std::map<std::string, std::string> secrets;
  std::string volumes_json = "[]";
  bool logs = false;
  std::string delegate_id;
  std::string status = "QUEUED";  // QUEUED RUNNING SUCCESS FAILURE
  bool failed = false;
  std::string error;  // why it failed, when the manager failed it
  std::vector<std::string> task_ids;
};

struct ReferenceManager::DelegateRecord {
  std::string id;
  std::string name;
  std::string host_name;
  std::vector<std::string> tags;
  std::string register_body;
  int heartbeats = 0;
  bool registered = true;
  bool lost = false;
  absl::Time last_seen = absl::Now();
};

namespace {

std::string Json(const rapidjson::Value& v) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  v.Accept(w);
  return std::string(buf.GetString(), buf.GetSize());
}

std::string Quote(std::string_view s) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
  return std::string(buf.GetString(), buf.GetSize());
}

http::ServerResponse Error(int status, std::string_view message) {
  http::ServerResponse r;
  r.status = status;
  r.body = absl::StrCat("{\"error_msg\":", Quote(message), "}");
  return r;
}

http::ServerResponse Ok(std::string body) {
  http::ServerResponse r;
  r.body = std::move(body);
  return r;
}

std::string StringField(const rapidjson::Value& v, const char* name) {
  if (!v.IsObject()) return "";
  auto it = v.FindMember(name);
  if (it == v.MemberEnd() || !it->value.IsString()) return "";
  return std::string(it->value.GetString(), it->value.GetStringLength());
}

std::string RandomHex(int bytes) {
  static std::mt19937_64 rng{std::random_device{}()};
  std::string out;
  for (int i = 0; i < bytes; ++i) {
    absl::StrAppend(&out, absl::Hex(rng() & 0xff, absl::kZeroPad2));
  }
  return out;
}

}  // namespace

ReferenceManager::ReferenceManager(ManagerOptions options)
    : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<ReferenceManager>> ReferenceManager::Start(
    ManagerOptions options) {
  if (options.account_id.empty()) {
    return absl::InvalidArgumentError("--account: the account id is required");
  }
  absl::StatusOr<SecretString> token =
      harness::NormalizeDelegateToken(options.token, "--token");
  if (!token.ok()) return token.status();
  std::unique_ptr<ReferenceManager> m(new ReferenceManager(std::move(options)));
  m->token_ = *token;
  m->token_hash_ = harness::DelegateTokenHash(m->token_);
  m->LoadState();
  m->LoadLogs();
  http::ServerOptions server;
  server.address = m->options_.address;
  server.port = m->options_.port;
  server.tls = m->options_.tls;
  // Its clients (delegates under test) all come from loopback: the cap per
  // client would be the cap of them all.
  server.max_connections_per_client = 0;
  // Only its routes take a body; a request to any other path is refused
  // before its body is read.
  server.body_limit = [](const http::ServerRequest& head) -> size_t {
    for (const char* route : {"/api/", "/log-service/", "/admin/"}) {
      if (absl::StartsWith(head.path, route)) return SIZE_MAX;
    }
    return 0;
  };
  ReferenceManager* self = m.get();
  absl::StatusOr<std::unique_ptr<http::HttpServer>> s = http::HttpServer::Start(
      server,
      [self](const http::ServerRequest& req) { return self->Handle(req); });
  if (!s.ok()) return s.status();
  {
    // Requests may come before Start returns (a delegate retrying against
    // a restarted manager): until base_url_ is set they are answered 503.
    std::lock_guard lock(m->mu_);
    m->base_url_ = (*s)->url();
    m->server_ = *std::move(s);
  }
  return m;
}

ReferenceManager::~ReferenceManager() { Stop(); }

void ReferenceManager::Stop() {
  if (server_) server_->Stop();
}

void ReferenceManager::SetFaults(const Faults& faults) {
  std::lock_guard lock(mu_);
  faults_ = faults;
}

std::vector<absl::Duration> ReferenceManager::TaskLatencies() const {
  std::lock_guard lock(mu_);
  std::vector<absl::Duration> out;
  for (const auto& [id, t] : tasks_) {
    if (t->state == "answered") out.push_back(t->answered_at - t->queued_at);
  }
  return out;
}

size_t ReferenceManager::responses() const {
  std::lock_guard lock(mu_);
  return responses_;
}

http::ServerResponse ReferenceManager::Handle(const http::ServerRequest& req) {
  if (absl::StartsWith(req.path, "/admin/")) return HandleAdmin(req);
  if (absl::StartsWith(req.path, "/log-service/")) return HandleLogs(req);
  if (!absl::StartsWith(req.path, "/api/")) return Error(404, "no such path");
  absl::Duration delay;
  {
    std::lock_guard lock(mu_);
    if (base_url_.empty()) return Error(503, "starting");
    ExpireLostLocked();
    if (faults_.delay_next != 0) {
      delay = faults_.delay;
      if (faults_.delay_next > 0) --faults_.delay_next;
    }
    if (faults_.fail_next > 0) {
      --faults_.fail_next;
      return Error(faults_.fail_status, "injected failure");
    }
  }
  if (delay > absl::ZeroDuration()) absl::SleepFor(delay);
  return HandleAgent(req);
}

http::ServerResponse ReferenceManager::HandleAgent(
    const http::ServerRequest& req) {
  // Authentication, as DelegateTokenAuthenticatorImpl does it.
  const std::string account = req.query("accountId").value_or("");
  if (account.empty()) return Error(400, "accountId query parameter missing");
  if (account != options_.account_id) return Error(401, "unknown account");
  absl::string_view auth = AbslView(req.header("Authorization"));
  if (!absl::ConsumePrefix(&auth, "Delegate ")) {
    return Error(401, "Authorization: expected 'Delegate <jwe>'");
  }
  absl::StatusOr<harness::RequestClaims> claims =
      harness::DecryptRequestToken(StdView(auth), token_);
  if (!claims.ok()) return Error(401, "invalid token");
  if (claims->exp <= absl::Now()) return Error(401, "EXPIRED_TOKEN");
  if (claims->sub != account) return Error(401, "token is for another account");
  if (req.header("delegateTokenHash") != token_hash_) {
    return Error(401, "delegateTokenHash does not match the token");
  }

  std::vector<std::string> parts = absl::StrSplit(req.path, '/');
  // "", "api", ...
  rapidjson::Document body;
  if (!req.body.empty()) {
    body.Parse(req.body.data(), req.body.size());
    if (body.HasParseError() || !body.IsObject()) {
      return Error(400, "body: expected a JSON object");
    }
  }
  std::unique_lock lock(mu_);
  if (req.method == "POST" && req.path == "/api/agent/delegates/register") {
    for (const char* f : {"accountId", "delegateName", "hostName", "ip"}) {
      if (StringField(body, f).empty()) {
        return Error(400, absl::StrCat("register: ", f, " missing"));
      }
    }
    if (!body.HasMember("runner") || !body["runner"].IsBool() ||
        !body["runner"].GetBool()) {
      return Error(400, "register: runner must be true");
    }
    if (!body.HasMember("capacityConfig") ||
        !body["capacityConfig"].IsObject()) {
      return Error(400, "register: capacityConfig must be an object");
    }
    if (!body.HasMember("tags") || !body["tags"].IsArray()) {
      return Error(400, "register: tags must be an array");
    }
    // A delegate that names the id it had (restarted, it kept its state;
    // perhaps on another host, as a replaced container) is that delegate
    // again, with the stages it holds, unless it was found lost (its
    // stages ended with that); otherwise the same
    // name and host registering again after unregistering keeps its id.
    std::shared_ptr<DelegateRecord> d;
    if (auto known = delegates_.find(StringField(body, "delegateId"));
        known != delegates_.end() && !known->second->lost &&
        known->second->name == StringField(body, "delegateName")) {
      d = known->second;
    }
    for (auto& [id, rec] : delegates_) {
      if (d) break;
      if (rec->name == StringField(body, "delegateName") &&
          rec->host_name == StringField(body, "hostName") && !rec->registered &&
          !rec->lost) {
        d = rec;
      }
    }
    if (!d) {
      d = std::make_shared<DelegateRecord>();
      d->id = absl::StrCat("dlg-", next_id_++, "-", RandomHex(4));
      delegates_[d->id] = d;
    }
    d->name = StringField(body, "delegateName");
    d->host_name = StringField(body, "hostName");
    d->register_body = req.body;
    d->registered = true;
    d->lost = false;
    d->last_seen = absl::Now();
    d->tags.clear();
    for (const auto& t : body["tags"].GetArray()) {
      if (t.IsString()) d->tags.push_back(t.GetString());
    }
    SaveLocked();
    return Ok(
        absl::StrCat("{\"resource\":{\"delegateId\":", Quote(d->id), "}}"));
  }
  if (req.method == "POST" &&
      req.path == "/api/agent/delegates/heartbeat-with-polling") {
    auto it = delegates_.find(StringField(body, "delegateId"));
    if (it == delegates_.end() || !it->second->registered) {
      return Error(404, "unknown delegate");
    }
    ++it->second->heartbeats;
    it->second->last_seen = absl::Now();
    return Ok(absl::StrCat("{\"resource\":{\"delegateId\":", Quote(it->first),
                           ",\"status\":\"ENABLED\"}}"));
  }
  if (req.method == "POST" && req.path == "/api/agent/delegates/unregister") {
    auto it = delegates_.find(StringField(body, "delegateId"));
    if (it == delegates_.end()) return Error(404, "unknown delegate");
    if (StringField(body, "ipAddress").empty()) {
      return Error(400, "unregister: ipAddress missing");
    }
    it->second->registered = false;
    SaveLocked();
    return Ok("{}");
  }
  if (parts.size() == 5 && parts[2] == "executions" && req.method == "GET" &&
      parts[4] == "runner-events") {
    const std::string& delegate_id = parts[3];
    auto d = delegates_.find(delegate_id);
    if (d == delegates_.end() || !d->second->registered) {
      return Error(404, "unknown delegate");
    }
    d->second->last_seen = absl::Now();
    std::string events;
    for (const std::string& task_id : queue_) {
      const TaskRecord& t = *tasks_.at(task_id);
      const StageRecord& s = *stages_.at(t.stage_id);
      if (!s.delegate_id.empty() && s.delegate_id != delegate_id) continue;
      const std::string event = absl::StrCat(
          "{\"accountId\":", Quote(options_.account_id),
          ",\"taskId\":", Quote(t.id),
          ",\"runnerType\":\"RUNNER\",\"taskType\":", Quote(t.type), "}");
      for (int copies = faults_.duplicate_events ? 2 : 1; copies > 0;
           --copies) {
        absl::StrAppend(&events, events.empty() ? "" : ",", event);
      }
    }
    return Ok(absl::StrCat("{\"delegateRunnerEvents\":[", events, "]}"));
  }
  if (parts.size() == 5 && parts[2] == "executions" && req.method == "GET" &&
      parts[4] == "request") {
    const std::string delegate_id = req.query("delegateId").value_or("");
    for (const char* q : {"delegateId", "delegateInstanceId", "delegateName"}) {
      if (req.query(q).value_or("").empty()) {
        return Error(400, absl::StrCat("request: ", q, " missing"));
      }
    }
    SeenLocked(delegate_id);
    auto it = tasks_.find(parts[3]);
    if (it == tasks_.end()) return Error(404, "unknown task");
    TaskRecord& t = *it->second;
    StageRecord& s = *stages_.at(t.stage_id);
    if (!s.delegate_id.empty() && s.delegate_id != delegate_id) {
      return Error(409, "the stage runs on another delegate");
    }
    if (t.state == "answered") return Ok("{\"requests\":[]}");
    s.delegate_id = delegate_id;
    if (s.status == "QUEUED") s.status = "RUNNING";
    t.state = "delivered";
    t.delegate_id = delegate_id;
    ++t.deliveries;
    auto encode = [&](const std::string& json) {
      return options_.base64_data ? Quote(Base64Encode(json)) : json;
    };
    std::string secrets;
    for (const auto& [id, value] : s.secrets) {
      const std::string data =
          absl::StrCat("{\"secrets\":[{\"id\":", Quote(id),
                       ",\"value\":", Quote(value), ",\"base64\":false}]}");
      absl::StrAppend(
          &secrets, secrets.empty() ? "" : ",", "{\"id\":", Quote(id),
          ",\"type\":\"secret/static\",\"data\":", encode(data), "}");
    }
    std::string logger;
    if (s.logs) {
      const std::string key = t.step >= 0 ? absl::StrCat(s.id, "/step-", t.step)
                                          : absl::StrCat(s.id, "/", t.type);
      logger = absl::StrCat(
          ",\"logger\":{\"address\":", Quote(base_url_ + "/log-service/"),
          ",\"token\":", Quote("log-" + token_hash_.substr(0, 16)),
          ",\"key\":", Quote(key), ",\"account\":", Quote(options_.account_id),
          "}");
    }
    SaveLocked();
    return Ok(absl::StrCat("{\"requests\":[{\"id\":", Quote(t.id),
                           ",\"account\":", Quote(options_.account_id),
                           ",\"task\":{\"id\":", Quote(t.id),
                           ",\"type\":", Quote(t.type),
                           ",\"driver\":\"\",\"data\":", encode(t.data_json),
                           logger, "},\"secrets\":[", secrets, "]}]}"));
  }
  if (parts.size() == 5 && parts[2] == "executions" && req.method == "POST" &&
      parts[4] == "task-response") {
    if (req.query("runnerId").value_or("").empty()) {
      return Error(400, "task-response: runnerId missing");
    }
    SeenLocked(req.query("runnerId").value_or(""));
    auto it = tasks_.find(parts[3]);
    if (it == tasks_.end()) return Error(404, "unknown task");
    TaskRecord& t = *it->second;
    if (StringField(body, "id") != t.id) {
      return Error(400, "task-response: id does not match the task");
    }
    if (StringField(body, "type") != t.type) {
      return Error(400, "task-response: type does not match the task");
    }
    const std::string code = StringField(body, "code");
    if (code != "OK" && code != "FAILED") {
      return Error(400, "task-response: code must be OK or FAILED");
    }
    std::optional<std::string> data = Base64Decode(StringField(body, "data"));
    rapidjson::Document parsed;
    if (data) parsed.Parse(data->data(), data->size());
    if (!data || data->empty() || parsed.HasParseError() ||
        !parsed.IsObject()) {
      return Error(400, "task-response: data must be base64 of a JSON object");
    }
    ++responses_;
    ++t.responses;
    // A repeat, or an answer to a task failed when its delegate was lost:
    // recorded only.
    if (t.state == "answered" || t.state == "failed") return Ok("{}");
    t.state = "answered";
    t.answered_at = absl::Now();
    t.code = code;
    t.error = StringField(body, "error");
    t.response_data = *data;
    for (auto q = queue_.begin(); q != queue_.end(); ++q) {
      if (*q == t.id) {
        queue_.erase(q);
        break;
      }
    }
    Advance(*stages_.at(t.stage_id), t);
    SaveLocked();
    cv_.notify_all();
    return Ok("{}");
  }
  return Error(404,
               absl::StrCat("no such endpoint: ", req.method, " ", req.path));
}

std::string ReferenceManager::QueueTask(StageRecord& stage,
                                        const std::string& type,
                                        const std::string& data_json) {
  auto t = std::make_shared<TaskRecord>();
  t->id = absl::StrCat("task-", next_id_++, "-", RandomHex(4));
  t->type = type;
  t->stage_id = stage.id;
  t->data_json = data_json;
  tasks_[t->id] = t;
  queue_.push_back(t->id);
  stage.task_ids.push_back(t->id);
  return t->id;
}

void ReferenceManager::Advance(StageRecord& stage, const TaskRecord& answered) {
  rapidjson::Document d;
  d.Parse(answered.response_data.c_str());
  const std::string status = StringField(d, "command_execution_status");
  const bool ok =
      answered.code == "OK" && (status.empty() || status == "SUCCESS");
  const std::string network = Quote(stage.id);
  auto cleanup = [&] {
    QueueTask(stage, "local_cleanup",
              absl::StrCat("{\"network\":", network, ",\"stage_runtime_id\":",
                           network, ",\"volumes\":", stage.volumes_json,
                           ",\"containers\":{\"labels\":{}}}"));
  };
  auto step = [&](int i) {
    rapidjson::Document s;
    s.Parse(stage.steps[i].c_str());
    rapidjson::Value key;
    s.AddMember("stage_runtime_id",
                rapidjson::Value(stage.id.c_str(), s.GetAllocator()),
                s.GetAllocator());
    s.AddMember("network", rapidjson::Value(stage.id.c_str(), s.GetAllocator()),
                s.GetAllocator());
    const std::string id = QueueTask(stage, "local_execute", Json(s));
    tasks_.at(id)->step = i;
  };
  if (answered.type == "local_init") {
    if (!ok) {
      stage.failed = true;
      cleanup();
    } else if (stage.steps.empty()) {
      cleanup();
    } else {
      step(0);
    }
  } else if (answered.type == "local_execute") {
    if (!ok) stage.failed = true;
    if (ok && answered.step + 1 < static_cast<int>(stage.steps.size())) {
      step(answered.step + 1);
    } else {
      cleanup();
    }
  } else if (answered.type == "local_cleanup") {
    if (!ok) stage.failed = true;
    stage.status = stage.failed ? "FAILURE" : "SUCCESS";
  } else {
    stage.status = ok ? "SUCCESS" : "FAILURE";
  }
}

absl::StatusOr<std::string> ReferenceManager::SubmitStage(
    const std::string& spec_json) {
  rapidjson::Document spec;
  spec.Parse(spec_json.c_str());
  if (spec.HasParseError() || !spec.IsObject()) {
    return absl::InvalidArgumentError("stage: expected a JSON object");
  }
  auto stage = std::make_shared<StageRecord>();
  stage->spec_json = spec_json;
  std::unique_lock lock(mu_);
  stage->id = StringField(spec, "id");
  if (stage->id.empty()) stage->id = absl::StrCat("stage-", next_id_++);
  if (stages_.count(stage->id)) {
    return absl::AlreadyExistsError(
        absl::StrCat("stage ", stage->id, " exists"));
  }
  if (spec.HasMember("steps")) {
    if (!spec["steps"].IsArray()) {
      return absl::InvalidArgumentError("steps: expected an array");
    }
    for (const auto& s : spec["steps"].GetArray()) {
      if (!s.IsObject()) {
        return absl::InvalidArgumentError("steps[]: expected objects");
      }
      stage->steps.push_back(Json(s));
    }
  }
  if (spec.HasMember("secrets") && spec["secrets"].IsObject()) {
    for (const auto& m : spec["secrets"].GetObject()) {
      if (m.value.IsString()) {
        stage->secrets[m.name.GetString()] = m.value.GetString();
      }
    }
  }
  if (spec.HasMember("volumes") && spec["volumes"].IsArray()) {
    stage->volumes_json = Json(spec["volumes"]);
  }
  stage->logs =
      spec.HasMember("logs") && spec["logs"].IsBool() && spec["logs"].GetBool();
  const std::string type = StringField(spec, "type");
  stages_[stage->id] = stage;
  if (!type.empty()) {
    // A single task of any type, for protocol tests: data as given.
    QueueTask(*stage, type,
              spec.HasMember("data") ? Json(spec["data"]) : std::string("{}"));
  } else {
    const std::string network = Quote(stage->id);
    QueueTask(*stage, "local_init",
              absl::StrCat("{\"network\":{\"id\":", network,
                           "},\"stage_runtime_id\":", network, ",\"volumes\":",
                           stage->volumes_json, ",\"envs\":{}}"));
  }
  SaveLocked();
  return stage->id;
}

std::string ReferenceManager::StageToJsonLocked(const StageRecord& s) const {
  std::string tasks;
  for (const std::string& id : s.task_ids) {
    const TaskRecord& t = *tasks_.at(id);
    absl::StrAppend(
        &tasks, tasks.empty() ? "" : ",", "{\"id\":", Quote(t.id),
        ",\"type\":", Quote(t.type), ",\"step\":", t.step,
        ",\"state\":", Quote(t.state),
        ",\"delegate_id\":", Quote(t.delegate_id), ",\"code\":", Quote(t.code),
        ",\"error\":", Quote(t.error), ",\"responses\":", t.responses,
        ",\"deliveries\":", t.deliveries,
        ",\"data\":", t.response_data.empty() ? "null" : t.response_data, "}");
  }
  return absl::StrCat("{\"id\":", Quote(s.id), ",\"status\":", Quote(s.status),
                      ",\"error\":", Quote(s.error),
                      ",\"delegate_id\":", Quote(s.delegate_id), ",\"tasks\":[",
                      tasks, "]}");
}

std::vector<std::string> ReferenceManager::LogLines(const std::string& key) {
  std::lock_guard lock(mu_);
  auto it = logs_.find(key);
  return it == logs_.end() ? std::vector<std::string>{} : it->second;
}

absl::StatusOr<std::string> ReferenceManager::StageJson(const std::string& id) {
  std::lock_guard lock(mu_);
  ExpireLostLocked();
  auto it = stages_.find(id);
  if (it == stages_.end()) {
    return absl::NotFoundError(absl::StrCat("no stage ", id));
  }
  return StageToJsonLocked(*it->second);
}

bool ReferenceManager::WaitAllDone(absl::Duration timeout) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout), [&] {
    for (const auto& [id, s] : stages_) {
      if (s->status == "QUEUED" || s->status == "RUNNING") return false;
    }
    return true;
  });
}

http::ServerResponse ReferenceManager::HandleLogs(
    const http::ServerRequest& req) {
  const std::string key = req.query("key").value_or("");
  if (key.empty() || req.query("accountID").value_or("").empty()) {
    return Error(400, "accountID and key are required");
  }
  if (req.header("X-Harness-Token") != "log-" + token_hash_.substr(0, 16)) {
    return Error(401, "X-Harness-Token is not this manager's log token");
  }
  if (req.path != "/log-service/stream") return Error(404, "no such path");
  std::lock_guard lock(mu_);
  bool fail_after = false;
  if (faults_.log_fail_percent > 0 &&
      static_cast<int>(log_faults_rng_() % 100) < faults_.log_fail_percent) {
    // Opens and closes fail only before they are taken: a counted open
    // whose answer is lost would leave the count wrong.
    if (log_faults_rng_() % 2 == 0 || req.method != "PUT") {
      return Error(503, "injected log service failure");
    }
    fail_after = true;
  }
  http::ServerResponse answer = HandleLogsLocked(req, key);
  if (fail_after && answer.status < 300) {
    return Error(503, "injected log service failure (after the call)");
  }
  return answer;
}

void ReferenceManager::OpenStreamLocked(const std::string& key) {
  ++open_streams_[key];
  logs_[key].clear();
  seen_lines_[key].clear();
}

http::ServerResponse ReferenceManager::HandleLogsLocked(
    const http::ServerRequest& req, const std::string& key) {
  if (req.method == "POST") {
    // As Harness's log service does: opening a stream makes it anew, so
    // lines written to an earlier stream of that key are gone.
    OpenStreamLocked(key);
    LogRecordLocked(absl::StrCat("{\"op\":\"open\",\"key\":", Quote(key), "}"));
    return Ok("{}");
  }
  if (req.method == "DELETE") {
    --open_streams_[key];
    LogRecordLocked(
        absl::StrCat("{\"op\":\"close\",\"key\":", Quote(key), "}"));
    return Ok("{}");
  }
  if (req.method != "PUT") return Error(405, "POST, PUT or DELETE");
  if (!open_streams_.count(key)) return Error(404, "stream not open");
  rapidjson::Document lines;
  lines.Parse(req.body.data(), req.body.size());
  if (lines.HasParseError() || !lines.IsArray()) {
    return Error(400, "body: expected a JSON array of lines");
  }
  for (const auto& l : lines.GetArray()) {
    if (!l.IsObject() || !l.HasMember("out") || !l["out"].IsString() ||
        !l.HasMember("pos") || !l["pos"].IsUint64() || !l.HasMember("level") ||
        !l.HasMember("time") || !l["time"].IsString()) {
      return Error(400, "line: expected {level,pos,out,time,args}");
    }
  }
  for (const auto& l : lines.GetArray()) {
    const std::string out = l["out"].GetString();
    const std::string id = absl::StrCat(l["pos"].GetUint64(), "|",
                                        l["time"].GetString(), "|", out);
    if (!seen_lines_[key].insert(id).second) continue;
    logs_[key].push_back(out);
    LogRecordLocked(absl::StrCat("{\"op\":\"line\",\"key\":", Quote(key),
                                 ",\"id\":", Quote(id), ",\"out\":", Quote(out),
                                 "}"));
  }
  return Ok("{}");
}

http::ServerResponse ReferenceManager::HandleAdmin(
    const http::ServerRequest& req) {
  if (req.method == "POST" && req.path == "/admin/stages") {
    absl::StatusOr<std::string> id = SubmitStage(req.body);
    if (!id.ok()) return Error(400, StdView(id.status().message()));
    return Ok(absl::StrCat("{\"id\":", Quote(*id), "}"));
  }
  if (req.method == "GET" && absl::StartsWith(req.path, "/admin/stages/")) {
    absl::StatusOr<std::string> s =
        StageJson(req.path.substr(strlen("/admin/stages/")));
    if (!s.ok()) return Error(404, StdView(s.status().message()));
    return Ok(*s);
  }
  if (req.method == "GET" && req.path == "/admin/logs") {
    std::lock_guard lock(mu_);
    std::string out;
    for (const std::string& line : logs_[req.query("key").value_or("")]) {
      absl::StrAppend(&out, out.empty() ? "" : ",", Quote(line));
    }
    return Ok(absl::StrCat("[", out, "]"));
  }
  if (req.method == "GET" && req.path == "/admin/delegates") {
    std::lock_guard lock(mu_);
    ExpireLostLocked();
    std::string out;
    for (const auto& [id, d] : delegates_) {
      absl::StrAppend(&out, out.empty() ? "" : ",", "{\"id\":", Quote(id),
                      ",\"name\":", Quote(d->name),
                      ",\"registered\":", d->registered ? "true" : "false",
                      ",\"lost\":", d->lost ? "true" : "false",
                      ",\"heartbeats\":", d->heartbeats,
                      ",\"register\":", d->register_body, "}");
    }
    return Ok(absl::StrCat("[", out, "]"));
  }
  if (req.method == "POST" && req.path == "/admin/faults") {
    rapidjson::Document f;
    f.Parse(req.body.c_str());
    if (f.HasParseError() || !f.IsObject()) return Error(400, "JSON object");
    Faults faults;
    if (f.HasMember("fail_next") && f["fail_next"].IsInt()) {
      faults.fail_next = f["fail_next"].GetInt();
    }
    if (f.HasMember("fail_status") && f["fail_status"].IsInt()) {
      faults.fail_status = f["fail_status"].GetInt();
    }
    if (f.HasMember("duplicate_events") && f["duplicate_events"].IsBool()) {
      faults.duplicate_events = f["duplicate_events"].GetBool();
    }
    if (f.HasMember("delay_ms") && f["delay_ms"].IsInt()) {
      faults.delay = absl::Milliseconds(f["delay_ms"].GetInt());
    }
    if (f.HasMember("delay_next") && f["delay_next"].IsInt()) {
      faults.delay_next = f["delay_next"].GetInt();
    }
    if (f.HasMember("log_fail_percent") && f["log_fail_percent"].IsInt()) {
      faults.log_fail_percent = f["log_fail_percent"].GetInt();
    }
    SetFaults(faults);
    return Ok("{}");
  }
  return Error(404, "no such admin endpoint");
}

void ReferenceManager::SeenLocked(const std::string& delegate_id) {
  auto it = delegates_.find(delegate_id);
  if (it != delegates_.end() && it->second->registered) {
    it->second->last_seen = absl::Now();
  }
}

void ReferenceManager::ExpireLostLocked() {
  const absl::Time now = absl::Now();
  bool changed = false;
  for (auto& [id, d] : delegates_) {
    if (!d->registered || now - d->last_seen <= options_.lost_after) continue;
    d->registered = false;
    d->lost = true;
    changed = true;
    const std::string reason =
        absl::StrCat("the delegate ", id, " (", d->name,
                     ") was lost: nothing heard from it for ",
                     absl::FormatDuration(
                         absl::Trunc(now - d->last_seen, absl::Seconds(1))));
    for (auto& [stage_id, s] : stages_) {
      if (s->delegate_id != id ||
          (s->status != "QUEUED" && s->status != "RUNNING")) {
        continue;
      }
      for (const std::string& task_id : s->task_ids) {
        TaskRecord& t = *tasks_.at(task_id);
        if (t.state == "answered") continue;
        t.state = "failed";
        t.code = "FAILED";
        t.error = reason;
        queue_.erase(std::remove(queue_.begin(), queue_.end(), task_id),
                     queue_.end());
      }
      s->failed = true;
      s->status = "FAILURE";
      s->error = reason;
    }
  }
  if (changed) {
    SaveLocked();
    cv_.notify_all();
  }
}

void ReferenceManager::LogRecordLocked(const std::string& json) {
  if (!logs_out_.is_open()) return;
  logs_out_ << json << '\n';
  logs_out_.flush();
}

void ReferenceManager::LoadLogs() {
  if (options_.state_file.empty()) return;
  const std::string path = options_.state_file + ".logs";
  bool torn = false;
  {
    std::ifstream in(path);
    std::stringstream all;
    all << in.rdbuf();
    const std::string text = all.str();
    torn = !text.empty() && text.back() != '\n';
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      rapidjson::Document r;
      r.Parse(line.data(), line.size());
      // A record cut short by a kill took nothing; it is passed over.
      if (r.HasParseError() || !r.IsObject()) continue;
      const std::string op = StringField(r, "op");
      const std::string key = StringField(r, "key");
      if (op == "open") {
        OpenStreamLocked(key);
      } else if (op == "close") {
        --open_streams_[key];
      } else if (op == "line") {
        seen_lines_[key].insert(StringField(r, "id"));
        logs_[key].push_back(StringField(r, "out"));
      }
    }
  }
  logs_out_.open(path, std::ios::app);
  if (torn) logs_out_ << '\n';
}

void ReferenceManager::SaveLocked() const {
  if (options_.state_file.empty()) return;
  std::string stages, tasks, delegates, queue;
  for (const auto& [id, s] : stages_) {
    absl::StrAppend(
        &stages, stages.empty() ? "" : ",", "{\"spec\":", Quote(s->spec_json),
        ",\"id\":", Quote(s->id), ",\"delegate_id\":", Quote(s->delegate_id),
        ",\"status\":", Quote(s->status), ",\"failed\":", s->failed ? 1 : 0,
        ",\"error\":", Quote(s->error), ",\"tasks\":[");
    for (size_t i = 0; i < s->task_ids.size(); ++i) {
      absl::StrAppend(&stages, i ? "," : "", Quote(s->task_ids[i]));
    }
    stages += "]}";
  }
  for (const auto& [id, t] : tasks_) {
    absl::StrAppend(
        &tasks, tasks.empty() ? "" : ",", "{\"id\":", Quote(t->id),
        ",\"type\":", Quote(t->type), ",\"stage\":", Quote(t->stage_id),
        ",\"data\":", Quote(t->data_json), ",\"step\":", t->step,
        ",\"state\":", Quote(t->state),
        ",\"delegate_id\":", Quote(t->delegate_id),
        ",\"code\":", Quote(t->code), ",\"error\":", Quote(t->error),
        ",\"response\":", Quote(t->response_data),
        ",\"responses\":", t->responses, ",\"deliveries\":", t->deliveries,
        "}");
  }
  for (const auto& [id, d] : delegates_) {
    absl::StrAppend(&delegates, delegates.empty() ? "" : ",",
                    "{\"id\":", Quote(d->id), ",\"name\":", Quote(d->name),
                    ",\"host\":", Quote(d->host_name),
                    ",\"registered\":", d->registered ? 1 : 0,
                    ",\"body\":", Quote(d->register_body), "}");
  }
  for (const std::string& id : queue_) {
    absl::StrAppend(&queue, queue.empty() ? "" : ",", Quote(id));
  }
  const std::string tmp = options_.state_file + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << "{\"next_id\":" << next_id_ << ",\"responses\":" << responses_
        << ",\"stages\":[" << stages << "],\"tasks\":[" << tasks
        << "],\"delegates\":[" << delegates << "],\"queue\":[" << queue << "]}";
  }
  std::rename(tmp.c_str(), options_.state_file.c_str());
}

void ReferenceManager::LoadState() {
  if (options_.state_file.empty()) return;
  std::ifstream in(options_.state_file);
  if (!in) return;
  std::stringstream ss;
  ss << in.rdbuf();
  rapidjson::Document d;
  d.Parse(ss.str().c_str());
  if (d.HasParseError() || !d.IsObject()) return;
  next_id_ = d["next_id"].GetUint64();
  responses_ = d["responses"].GetUint64();
  for (const auto& t : d["tasks"].GetArray()) {
    auto r = std::make_shared<TaskRecord>();
    r->id = StringField(t, "id");
    r->type = StringField(t, "type");
    r->stage_id = StringField(t, "stage");
    r->data_json = StringField(t, "data");
    r->step = t["step"].GetInt();
    r->state = StringField(t, "state");
    r->delegate_id = StringField(t, "delegate_id");
    r->code = StringField(t, "code");
    r->error = StringField(t, "error");
    r->response_data = StringField(t, "response");
    r->responses = t["responses"].GetInt();
    r->deliveries = t["deliveries"].GetInt();
    tasks_[r->id] = r;
  }
  for (const auto& s : d["stages"].GetArray()) {
    rapidjson::Document spec;
    const std::string spec_json = StringField(s, "spec");
    spec.Parse(spec_json.c_str());
    auto r = std::make_shared<StageRecord>();
    r->id = StringField(s, "id");
    r->spec_json = spec_json;
    if (spec.IsObject() && spec.HasMember("steps") && spec["steps"].IsArray()) {
      for (const auto& st : spec["steps"].GetArray())
        r->steps.push_back(Json(st));
    }
    if (spec.IsObject() && spec.HasMember("secrets") &&
        spec["secrets"].IsObject()) {
      for (const auto& m : spec["secrets"].GetObject()) {
        if (m.value.IsString())
          r->secrets[m.name.GetString()] = m.value.GetString();
      }
    }
    if (spec.IsObject() && spec.HasMember("volumes") &&
        spec["volumes"].IsArray()) {
      r->volumes_json = Json(spec["volumes"]);
    }
    r->logs = spec.IsObject() && spec.HasMember("logs") &&
              spec["logs"].IsBool() && spec["logs"].GetBool();
    r->delegate_id = StringField(s, "delegate_id");
    r->status = StringField(s, "status");
    r->failed = s["failed"].GetInt() != 0;
    r->error = StringField(s, "error");
    for (const auto& t : s["tasks"].GetArray())
      r->task_ids.push_back(t.GetString());
    stages_[r->id] = r;
  }
  for (const auto& x : d["delegates"].GetArray()) {
    auto r = std::make_shared<DelegateRecord>();
    r->id = StringField(x, "id");
    r->name = StringField(x, "name");
    r->host_name = StringField(x, "host");
    r->registered = x["registered"].GetInt() != 0;
    r->register_body = StringField(x, "body");
    delegates_[r->id] = r;
  }
  for (const auto& q : d["queue"].GetArray()) queue_.push_back(q.GetString());
}

}  // namespace delegate::reference
