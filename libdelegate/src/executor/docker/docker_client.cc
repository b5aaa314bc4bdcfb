#include "executor/docker/docker_client.h"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "executor/docker/docker_answers.h"
#include "executor/docker/docker_stream.h"
#include "http/http_client.h"
#include "util/json.h"
#include "util/strings.h"
#include "util/url.h"

namespace delegate::docker {
namespace {

constexpr std::string_view kDefaultSocket = "/var/run/docker.sock";
// The newest Engine API version this client speaks. Everything it uses is
// unchanged from 1.41 through this one; negotiating up matters because newer
// daemons drop old versions (Engine 29 refuses anything below 1.44).
constexpr std::string_view kNewestApiVersion = "1.47";
// Long enough for a daemon under load; the streaming calls have no limit
// and rely on their StopPredicate instead.
constexpr absl::Duration kCallTimeout = absl::Minutes(5);
constexpr absl::Duration kPullTimeout = absl::Hours(1);

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

// --- JSON helpers -----------------------------------------------------------

void WriteString(JsonWriter& w, std::string_view s) {
  w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}

void WriteStrings(JsonWriter& w, std::string_view key,
                  const std::vector<std::string>& values) {
  WriteString(w, key);
  w.StartArray();
  for (const std::string& v : values) WriteString(w, v);
  w.EndArray();
}

void WriteLabels(JsonWriter& w,
                 const std::map<std::string, std::string>& labels) {
  w.Key("Labels");
  w.StartObject();
  for (const auto& [key, value] : labels) {
    WriteString(w, key);
    WriteString(w, value);
  }
  w.EndObject();
}

// Config.Healthcheck; durations in nanoseconds, zero for the default.
void WriteHealthCheck(JsonWriter& w, const HealthCheck& check) {
  w.Key("Healthcheck");
  w.StartObject();
  WriteStrings(w, "Test", check.test);
  w.Key("Interval");
  w.Int64(absl::ToInt64Nanoseconds(check.interval));
  w.Key("Timeout");
  w.Int64(absl::ToInt64Nanoseconds(check.timeout));
  w.Key("Retries");
  w.Int(check.retries);
  w.Key("StartPeriod");
  w.Int64(absl::ToInt64Nanoseconds(check.start_period));
  w.EndObject();
}

// The daemon's words for a failed call (see docker_answers.h).
std::string DaemonMessage(const http::Response& response) {
  return docker::DaemonMessage(response.status, response.body);
}

absl::Status DaemonError(const http::Response& response,
                         std::string_view what) {
  return docker::DaemonError(response.status, response.body, what);
}

// --- Versions and names -----------------------------------------------------

// "repo/name:tag", "host:5000/name", "name@sha256:..." -> (name, tag or
// digest), defaulting the tag to "latest" (an empty tag would pull every
// tag).
std::pair<std::string, std::string> SplitReference(const std::string& image) {
  if (size_t at = image.find('@'); at != std::string::npos) {
    return {image.substr(0, at), image.substr(at + 1)};
  }
  size_t slash = image.rfind('/');
  size_t colon = image.rfind(':');
  if (colon != std::string::npos &&
      (slash == std::string::npos || colon > slash)) {
    std::string tag = image.substr(colon + 1);
    return {image.substr(0, colon), tag.empty() ? "latest" : tag};
  }
  return {image, "latest"};
}

// The registry an image name points at, as the daemon decides it: the first
// path component when it looks like a host, else Docker Hub.
std::string RegistryOf(const std::string& name) {
  size_t slash = name.find('/');
  if (slash != std::string::npos) {
    std::string first = name.substr(0, slash);
    if (absl::StrContains(first, ".") || absl::StrContains(first, ":") ||
        first == "localhost") {
      return first;
    }
  }
  return "https://index.docker.io/v1/";
}

// X-Registry-Auth: URL-safe base64 of the auth JSON, with padding (the
// Engine decodes it with Go's padded base64.URLEncoding).
std::string EncodeAuth(const RegistryAuth& auth, const std::string& name) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  json::StringField(w, "username", auth.username);
  json::StringField(w, "password", auth.password);
  json::StringField(w, "serveraddress",
                    auth.server.empty() ? RegistryOf(name) : auth.server);
  w.EndObject();
  std::string encoded;
  absl::WebSafeBase64Escape(
      absl::string_view(buffer.GetString(), buffer.GetSize()), &encoded);
  while (encoded.size() % 4 != 0) encoded.push_back('=');
  return encoded;
}

std::string LabelFilter(const std::string& label) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  w.Key("label");
  w.StartArray();
  WriteString(w, label);
  w.EndArray();
  w.EndObject();
  return UrlEncode(std::string_view(buffer.GetString(), buffer.GetSize()));
}

// Container ids and names, network and volume names in a URL path.
std::string PathPart(std::string_view s) { return UrlEncode(s); }

// --- The client -----------------------------------------------------------

class EngineClient final : public DockerClient {
 public:
  EngineClient(Endpoint endpoint, std::string version)
      : endpoint_(std::move(endpoint)),
        version_(std::move(version)),
        prefix_(absl::StrCat(endpoint_.base_url, "/v", version_)) {}

  std::string api_version() const override { return version_; }

  absl::Status Ping(absl::Duration timeout) override {
    http::Request request;
    request.url = absl::StrCat(endpoint_.base_url, "/_ping");
    request.unix_socket = endpoint_.unix_socket;
    request.fresh_connection = true;
    request.connect_timeout = timeout;
    request.timeout = timeout;
    absl::StatusOr<http::Response> r = Do(request);
    if (!r.ok()) {
      return absl::UnavailableError(
          absl::StrCat("the Docker Engine at ", endpoint_.display,
                       " does not answer: ", r.status().message()));
    }
    if (r->status != 200) {
      return absl::UnavailableError(
          absl::StrCat("the Docker Engine at ", endpoint_.display,
                       " answers GET /_ping with HTTP ", r->status));
    }
    return absl::OkStatus();
  }

  absl::Status CreateNetwork(
      const std::string& name,
      const std::map<std::string, std::string>& labels) override {
    return CreateNamed("network", "/networks/create", name, labels,
                       /*check_duplicate=*/true);
  }

  absl::Status RemoveNetwork(const std::string& name_or_id) override {
    return Expect(
        Call("DELETE", absl::StrCat("/networks/", PathPart(name_or_id))),
        absl::StrCat("remove network ", name_or_id), {204, 200});
  }

  absl::Status CreateVolume(
      const std::string& name,
      const std::map<std::string, std::string>& labels) override {
    return CreateNamed("volume", "/volumes/create", name, labels,
                       /*check_duplicate=*/false);
  }

  absl::Status RemoveVolume(const std::string& name) override {
    return Expect(Call("DELETE", absl::StrCat("/volumes/", PathPart(name))),
                  absl::StrCat("remove volume ", name), {204});
  }

  absl::StatusOr<std::string> ReadFile(const std::string& id,
                                       const std::string& path,
                                       size_t max_bytes) override {
    const std::string what = absl::StrCat("read ", path, " from ", id);
    absl::StatusOr<http::Response> r =
        Call("GET", absl::StrCat("/containers/", PathPart(id),
                                 "/archive?path=", UrlEncode(path, "")));
    if (!r.ok()) return Transport(r.status(), what);
    if (r->status == 404) {
      return absl::NotFoundError(absl::StrCat(what, ": no such file"));
    }
    if (r->status != 200) return DaemonError(*r, what);
    return ParseArchiveMember(r->body, what, max_bytes);
  }

  absl::StatusOr<bool> HadOomEvent(const std::string& id,
                                   absl::Time since) override {
    const std::string what = absl::StrCat("events of container ", id);
    // until = now: the Engine sends what it has logged and closes.
    const std::string filters =
        absl::StrCat(R"({"container":[")", id, R"("],"event":["oom"]})");
    const auto seconds = [](absl::Time t) {  // "1765101234.567890"
      const int64_t us = absl::ToUnixMicros(t);
      return absl::StrFormat("%d.%06d", us / 1'000'000, us % 1'000'000);
    };
    absl::StatusOr<http::Response> r =
        Call("GET", absl::StrCat("/events?since=", seconds(since),
                                 "&until=", seconds(absl::Now()),
                                 "&filters=", UrlEncode(filters)));
    if (absl::Status s = Expect(r, what, {200}); !s.ok()) return s;
    return EventsHaveOom(r->body);
  }

  absl::StatusOr<bool> ImageExists(const std::string& image) override {
    const std::string what = absl::StrCat("inspect image ", image);
    absl::StatusOr<http::Response> r =
        Call("GET", absl::StrCat("/images/", UrlEncode(image, "/:@"), "/json"));
    if (!r.ok()) return Transport(r.status(), what);
    if (r->status == 200) return true;
    if (r->status == 404) return false;
    return DaemonError(*r, what);
  }

  absl::Status PullImage(
      const std::string& image, const RegistryAuth* auth,
      const std::function<void(std::string_view)>& progress) override {
    const std::string what = absl::StrCat("pull image ", image);
    auto [name, tag] = SplitReference(image);
    http::Request request = NewRequest(
        "POST", absl::StrCat("/images/create?fromImage=", UrlEncode(name),
                             "&tag=", UrlEncode(tag)));
    request.timeout = kPullTimeout;
    if (auth != nullptr) {
      request.headers.emplace_back("X-Registry-Auth", EncodeAuth(*auth, name));
    }
    // The body is a stream of JSON objects, one a line; an {"error"} object
    // in it is a failure even though the status was 200.
    std::string pending;
    std::string error;
    auto handle_line = [&](std::string_view line) {
      std::optional<PullLine> parsed = ParsePullLine(line);
      if (!parsed) return;
      if (parsed->error) {
        if (error.empty()) error = std::move(parsed->text);
        return;
      }
      if (progress) progress(parsed->text);
    };
    request.on_body = [&](std::string_view chunk) {
      pending.append(chunk);
      size_t start = 0;
      for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos;
           start = nl + 1) {
        handle_line(std::string_view(pending).substr(start, nl - start));
      }
      pending.erase(0, start);
      return true;
    };
    absl::StatusOr<http::Response> r = Do(request);
    absl::Status status;
    if (!r.ok()) {
      status = Transport(r.status(), what);
    } else if (r->status >= 500) {
      // The daemon relays a registry's failure (refused, timed out, bad
      // manifest) as a 500; classify it by its words like a stream error.
      std::string message = DaemonMessage(*r);
      status = absl::Status(PullErrorCode(message),
                            absl::StrCat(what, ": ", message));
    } else if (r->status != 200) {
      status = DaemonError(*r, what);
    } else {
      handle_line(pending);
      if (!error.empty()) {
        status =
            absl::Status(PullErrorCode(error), absl::StrCat(what, ": ", error));
      }
    }
    if (!status.ok() && auth != nullptr && !auth->password.empty() &&
        absl::StrContains(status.message(), auth->password)) {
      // Registries do not echo passwords, but make sure none reaches a log.
      status = absl::Status(
          status.code(), absl::StrReplaceAll(status.message(),
                                             {{auth->password, "********"}}));
    }
    return status;
  }

  absl::StatusOr<std::string> CreateContainer(
      const ContainerSpec& spec) override {
    rapidjson::StringBuffer buffer;
    JsonWriter w(buffer);
    w.StartObject();
    w.Key("Image");
    WriteString(w, spec.image);
    // Absent (not empty) Entrypoint and Cmd keep the image's.
    if (!spec.entrypoint.empty())
      WriteStrings(w, "Entrypoint", spec.entrypoint);
    if (!spec.cmd.empty()) WriteStrings(w, "Cmd", spec.cmd);
    WriteStrings(w, "Env", spec.env);
    if (!spec.working_dir.empty()) {
      w.Key("WorkingDir");
      WriteString(w, spec.working_dir);
    }
    if (!spec.user.empty()) {
      w.Key("User");
      WriteString(w, spec.user);
    }
    w.Key("Tty");
    w.Bool(false);  // FollowLogs demultiplexes; a TTY stream is not framed
    w.Key("OpenStdin");
    w.Bool(false);
    WriteLabels(w, spec.labels);
    if (spec.health_check) WriteHealthCheck(w, *spec.health_check);

    w.Key("HostConfig");
    w.StartObject();
    w.Key("Mounts");
    w.StartArray();
    for (const Mount& m : spec.mounts) {
      w.StartObject();
      w.Key("Type");
      w.String(m.type == Mount::Type::kBind ? "bind" : "volume");
      w.Key("Source");
      WriteString(w, m.source);
      w.Key("Target");
      WriteString(w, m.target);
      w.Key("ReadOnly");
      w.Bool(m.read_only);
      w.EndObject();
    }
    w.EndArray();
    if (!spec.network.empty()) {
      w.Key("NetworkMode");
      WriteString(w, spec.network);
    }
    w.Key("Privileged");
    w.Bool(spec.privileged);
    w.Key("ReadonlyRootfs");
    w.Bool(spec.read_only_rootfs);
    WriteStrings(w, "CapAdd", spec.cap_add);
    WriteStrings(w, "CapDrop", spec.cap_drop);
    if (spec.nano_cpus) {
      w.Key("NanoCpus");
      w.Int64(*spec.nano_cpus);
    }
    if (spec.memory_bytes) {
      w.Key("Memory");
      w.Int64(*spec.memory_bytes);
    }
    w.EndObject();

    if (!spec.network.empty() &&
        !absl::StartsWith(spec.network, "container:")) {
      w.Key("NetworkingConfig");
      w.StartObject();
      w.Key("EndpointsConfig");
      w.StartObject();
      WriteString(w, spec.network);
      w.StartObject();
      WriteStrings(w, "Aliases", spec.aliases);
      w.EndObject();
      w.EndObject();
      w.EndObject();
    }
    w.EndObject();

    std::string path = "/containers/create";
    if (!spec.name.empty()) {
      absl::StrAppend(&path, "?name=", UrlEncode(spec.name));
    }
    const std::string what = absl::StrCat(
        "create container ", spec.name.empty() ? spec.image : spec.name);
    absl::StatusOr<http::Response> r = Call("POST", path, Body(buffer));
    if (absl::Status s = Expect(r, what, {201}); !s.ok()) return s;
    return IdFrom(*r, what);
  }

  absl::Status StartContainer(const std::string& id) override {
    // 304: already started, which is what the caller wanted.
    return Expect(
        Call("POST", absl::StrCat("/containers/", PathPart(id), "/start"), ""),
        absl::StrCat("start container ", id), {204, 304});
  }

  absl::Status FollowLogs(const std::string& id, const OutputCallback& output,
                          const StopPredicate& stop) override {
    const std::string what = absl::StrCat("follow logs of container ", id);
    http::Request request =
        NewRequest("GET", absl::StrCat("/containers/", PathPart(id),
                                       "/logs?follow=1&stdout=1&stderr=1"));
    return Stream(std::move(request), what, output, stop);
  }

  absl::StatusOr<int> WaitContainer(const std::string& id,
                                    const StopPredicate& stop) override {
    const std::string what = absl::StrCat("wait for container ", id);
    http::Request request =
        NewRequest("POST", absl::StrCat("/containers/", PathPart(id),
                                        "/wait?condition=not-running"));
    request.timeout = absl::InfiniteDuration();
    request.abort = stop;
    absl::StatusOr<http::Response> r = Do(request);
    if (absl::Status s = Expect(r, what, {200}); !s.ok()) return s;
    return ParseWaitAnswer(r->body, what);
  }

  absl::StatusOr<ContainerState> InspectContainer(
      const std::string& id) override {
    const std::string what = absl::StrCat("inspect container ", id);
    absl::StatusOr<http::Response> r =
        Call("GET", absl::StrCat("/containers/", PathPart(id), "/json"));
    if (absl::Status s = Expect(r, what, {200}); !s.ok()) return s;
    return ParseInspectAnswer(r->body, what);
  }

  absl::Status StopContainer(const std::string& id,
                             absl::Duration grace) override {
    int64_t seconds = static_cast<int64_t>(std::ceil(
        absl::ToDoubleSeconds(std::max(grace, absl::ZeroDuration()))));
    http::Request request = NewRequest(
        "POST",
        absl::StrCat("/containers/", PathPart(id), "/stop?t=", seconds));
    // The daemon answers only once the container is down.
    request.timeout = absl::Seconds(seconds) + kCallTimeout;
    // 304: already stopped.
    return Expect(Do(request), absl::StrCat("stop container ", id), {204, 304});
  }

  absl::Status KillContainer(const std::string& id) override {
    return Expect(
        Call("POST", absl::StrCat("/containers/", PathPart(id), "/kill"), ""),
        absl::StrCat("kill container ", id), {204});
  }

  absl::Status RemoveContainer(const std::string& id, bool force) override {
    // v=1: also the container's anonymous volumes.
    return Expect(Call("DELETE", absl::StrCat("/containers/", PathPart(id),
                                              "?v=1&force=", force ? 1 : 0)),
                  absl::StrCat("remove container ", id), {204});
  }

  absl::StatusOr<int> Exec(const std::string& container_id,
                           const ExecSpec& spec, const OutputCallback& output,
                           const StopPredicate& stop) override {
    const std::string what = absl::StrCat("exec in container ", container_id);
    rapidjson::StringBuffer buffer;
    JsonWriter w(buffer);
    w.StartObject();
    w.Key("AttachStdin");
    w.Bool(false);
    w.Key("AttachStdout");
    w.Bool(true);
    w.Key("AttachStderr");
    w.Bool(true);
    w.Key("Tty");
    w.Bool(false);
    WriteStrings(w, "Cmd", spec.cmd);
    WriteStrings(w, "Env", spec.env);
    if (!spec.working_dir.empty()) {
      w.Key("WorkingDir");
      WriteString(w, spec.working_dir);
    }
    if (!spec.user.empty()) {
      w.Key("User");
      WriteString(w, spec.user);
    }
    w.EndObject();
    absl::StatusOr<http::Response> created = Call(
        "POST", absl::StrCat("/containers/", PathPart(container_id), "/exec"),
        Body(buffer));
    if (absl::Status s = Expect(created, what, {201}); !s.ok()) return s;
    absl::StatusOr<std::string> exec_id = IdFrom(*created, what);
    if (!exec_id.ok()) return exec_id.status();

    // Without "Upgrade: tcp" the daemon answers 200 and then hijacks the
    // connection: the framed stream runs until the command ends and the
    // daemon closes the connection.
    http::Request start = NewRequest(
        "POST", absl::StrCat("/exec/", PathPart(*exec_id), "/start"));
    start.headers.emplace_back("Content-Type", "application/json");
    start.body = R"({"Detach":false,"Tty":false})";
    if (absl::Status s = Stream(std::move(start), what, output, stop);
        !s.ok()) {
      return s;
    }

    // The exit code is recorded before the streams close, but allow the
    // daemon a moment in case "Running" lags behind.
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (true) {
      absl::StatusOr<http::Response> r =
          Call("GET", absl::StrCat("/exec/", PathPart(*exec_id), "/json"));
      if (absl::Status s = Expect(r, what, {200}); !s.ok()) return s;
      absl::StatusOr<ExecState> state = ParseExecInspectAnswer(r->body, what);
      if (!state.ok()) return state.status();
      if (!state->running && state->exit_code) {
        return static_cast<int>(*state->exit_code);
      }
      if (absl::Now() > deadline) {
        return absl::InternalError(
            absl::StrCat(what, ": output ended but the command still runs"));
      }
      if (stop && stop()) {
        return absl::CancelledError(absl::StrCat(what, ": abandoned"));
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  }

  absl::StatusOr<std::vector<std::string>> ListContainers(
      const std::string& label) override {
    return List(
        absl::StrCat("/containers/json?all=1&filters=", LabelFilter(label)),
        absl::StrCat("list containers labelled ", label), nullptr, "Id");
  }

  absl::StatusOr<std::vector<std::string>> ListNetworks(
      const std::string& label) override {
    return List(absl::StrCat("/networks?filters=", LabelFilter(label)),
                absl::StrCat("list networks labelled ", label), nullptr, "Id");
  }

  absl::StatusOr<std::vector<std::string>> ListVolumes(
      const std::string& label) override {
    return List(absl::StrCat("/volumes?filters=", LabelFilter(label)),
                absl::StrCat("list volumes labelled ", label), "Volumes",
                "Name");
  }

  absl::StatusOr<std::vector<Listed>> ListLabelled(
      ObjectKind kind, const std::string& label) override {
    std::string path;
    std::string what;
    switch (kind) {
      case ObjectKind::kContainer:
        path = "/containers/json?all=1&filters=";
        what = "list containers labelled ";
        break;
      case ObjectKind::kNetwork:
        path = "/networks?filters=";
        what = "list networks labelled ";
        break;
      case ObjectKind::kVolume:
        path = "/volumes?filters=";
        what = "list volumes labelled ";
        break;
    }
    absl::StrAppend(&path, LabelFilter(label));
    absl::StrAppend(&what, label);
    absl::StatusOr<http::Response> r = Call("GET", path);
    if (absl::Status s = Expect(r, what, {200}); !s.ok()) return s;
    return ParseListedAnswer(r->body, what, kind);
  }

 private:
  static std::string Body(const rapidjson::StringBuffer& buffer) {
    return std::string(buffer.GetString(), buffer.GetSize());
  }

  // POST {"Name", "Labels"[, "CheckDuplicate": true]} to `path`: a network
  // or a volume.
  absl::Status CreateNamed(std::string_view what, std::string_view path,
                           const std::string& name,
                           const std::map<std::string, std::string>& labels,
                           bool check_duplicate) {
    rapidjson::StringBuffer buffer;
    JsonWriter w(buffer);
    w.StartObject();
    json::StringField(w, "Name", name);
    WriteLabels(w, labels);
    if (check_duplicate) {
      w.Key("CheckDuplicate");
      w.Bool(true);
    }
    w.EndObject();
    return Expect(Call("POST", std::string(path), Body(buffer)),
                  absl::StrCat("create ", AbslView(what), " ", name), {201});
  }

  // `path_and_query` is below /v<version>.
  http::Request NewRequest(std::string method,
                           std::string_view path_and_query) const {
    http::Request request;
    request.method = std::move(method);
    request.url = absl::StrCat(prefix_, AbslView(path_and_query));
    request.unix_socket = endpoint_.unix_socket;
    request.timeout = kCallTimeout;
    return request;
  }

  absl::StatusOr<http::Response> Do(const http::Request& request) {
    return http_.Perform(request);
  }

  // A short call; a JSON `body` (even empty) makes it carry a Content-Type,
  // which the daemon insists on for POSTs with a body.
  absl::StatusOr<http::Response> Call(
      std::string method, std::string_view path_and_query,
      std::optional<std::string> body = std::nullopt) {
    http::Request request = NewRequest(std::move(method), path_and_query);
    if (body) {
      if (!body->empty()) {
        request.headers.emplace_back("Content-Type", "application/json");
      }
      request.body = std::move(*body);
    }
    return Do(request);
  }

  // A transfer failure, worded for the user. Cancelled (a StopPredicate)
  // stays Cancelled.
  absl::Status Transport(const absl::Status& status,
                         std::string_view what) const {
    return absl::Status(
        status.code(), absl::StrCat(AbslView(what), ": Docker Engine at ",
                                    endpoint_.display, ": ", status.message()));
  }

  absl::Status Expect(const absl::StatusOr<http::Response>& r,
                      std::string_view what, std::initializer_list<int> ok) {
    if (!r.ok()) return Transport(r.status(), what);
    if (std::find(ok.begin(), ok.end(), r->status) != ok.end()) {
      return absl::OkStatus();
    }
    return DaemonError(*r, what);
  }

  static absl::StatusOr<std::string> IdFrom(const http::Response& r,
                                            std::string_view what) {
    return ParseIdAnswer(r.body, what);
  }

  // Runs a request whose 2xx body is the framed stdout/stderr stream.
  absl::Status Stream(http::Request request, std::string_view what,
                      const OutputCallback& output, const StopPredicate& stop) {
    StreamDemuxer demuxer(output);
    absl::Status framing;
    request.timeout = absl::InfiniteDuration();
    request.abort = stop;
    request.on_body = [&](std::string_view chunk) {
      framing = demuxer.Feed(chunk);
      return framing.ok();
    };
    absl::StatusOr<http::Response> r = Do(request);
    if (!framing.ok()) {
      return absl::Status(framing.code(), absl::StrCat(AbslView(what), ": ",
                                                       framing.message()));
    }
    if (absl::Status s = Expect(r, what, {200, 101}); !s.ok()) return s;
    if (absl::Status s = demuxer.Finish(); !s.ok()) {
      return absl::Status(s.code(),
                          absl::StrCat(AbslView(what), ": ", s.message()));
    }
    return absl::OkStatus();
  }

  // GET `path`, a JSON array of objects (or one under `array_key`), each
  // contributing its `field`.
  absl::StatusOr<std::vector<std::string>> List(const std::string& path,
                                                const std::string& what,
                                                const char* array_key,
                                                const char* field) {
    absl::StatusOr<http::Response> r = Call("GET", path);
    if (absl::Status s = Expect(r, what, {200}); !s.ok()) return s;
    return ParseListAnswer(r->body, what, array_key, field);
  }

  const Endpoint endpoint_;
  const std::string version_;
  const std::string prefix_;  // base_url + "/v" + version
  http::HttpClient http_;
};

}  // namespace

absl::StatusOr<Endpoint> ParseDockerHost(std::string_view docker_host) {
  Endpoint endpoint;
  if (docker_host.empty()) {
    endpoint.unix_socket = std::string(kDefaultSocket);
    endpoint.base_url = "http://localhost";
    endpoint.display = absl::StrCat("unix://", AbslView(kDefaultSocket));
    return endpoint;
  }
  endpoint.display = std::string(docker_host);
  const absl::Status invalid = absl::InvalidArgumentError(
      absl::StrCat("DOCKER_HOST \"", AbslView(docker_host),
                   "\" is not unix:///path/to/socket or tcp://host:port"));
  if (docker_host.starts_with("unix://")) {
    std::string_view path = docker_host.substr(7);
    if (path.empty() || path.front() != '/') return invalid;
    endpoint.unix_socket = std::string(path);
    endpoint.base_url = "http://localhost";
    return endpoint;
  }
  if (docker_host.starts_with("tcp://")) {
    std::string_view address = docker_host.substr(6);
    if (address.ends_with("/")) address.remove_suffix(1);
    if (address.empty() ||
        address.find_first_of("/?#@ ") != std::string_view::npos) {
      return invalid;
    }
    // The port follows the last ':' outside an IPv6 literal's brackets.
    size_t close = address.rfind(']');
    size_t colon = address.rfind(':');
    bool has_port = colon != std::string_view::npos &&
                    (close == std::string_view::npos || colon > close);
    if (has_port) {
      int port = 0;
      if (!absl::SimpleAtoi(AbslView(address.substr(colon + 1)), &port) ||
          port <= 0 || port > 65535 || colon == 0) {
        return invalid;
      }
    }
    // The daemon's conventional plain-text port, as the docker CLI assumes.
    endpoint.base_url =
        absl::StrCat("http://", AbslView(address), has_port ? "" : ":2375");
    return endpoint;
  }
  return invalid;
}

absl::StatusOr<std::unique_ptr<DockerClient>> DockerClient::Connect(
    const Endpoint& endpoint, absl::Duration timeout) {
  auto unreachable = [&](std::string_view reason) {
    return absl::UnavailableError(absl::StrCat(
        "cannot reach the Docker Engine at ", endpoint.display, ": ",
        AbslView(reason), "; start dockerd or set DOCKER_HOST"));
  };
  http::HttpClient http(1);
  http::Request request;
  request.url = absl::StrCat(endpoint.base_url, "/version");
  request.unix_socket = endpoint.unix_socket;
  request.connect_timeout = timeout;
  request.timeout = timeout;
  absl::StatusOr<http::Response> r = http.Perform(request);
  if (!r.ok()) return unreachable(StdView(r.status().message()));
  if (r->status != 200) {
    return unreachable(absl::StrCat("GET /version answered HTTP ", r->status,
                                    ": ", DaemonMessage(*r)));
  }
  const std::string daemon_version = VersionAnswerApiVersion(r->body);
  std::optional<std::pair<int, int>> daemon = ParseApiVersion(daemon_version);
  if (!daemon) {
    return unreachable(absl::StrCat("GET /version gave no ApiVersion: ",
                                    r->body.substr(0, 200)));
  }
  if (*daemon < *ParseApiVersion(kMinApiVersion)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the Docker Engine at ", endpoint.display, " speaks API ",
        AbslView(daemon_version), ", older than the ", AbslView(kMinApiVersion),
        " the delegate needs; upgrade Docker"));
  }
  std::string version = *daemon < *ParseApiVersion(kNewestApiVersion)
                            ? std::string(daemon_version)
                            : std::string(kNewestApiVersion);
  return std::make_unique<EngineClient>(endpoint, std::move(version));
}

}  // namespace delegate::docker
