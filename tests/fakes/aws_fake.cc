// The loopback AWS fake: HTTP routing, SigV4 verification, the container
// credentials and task metadata endpoints, fault injection and inspection.
// The services' operations are in aws_fake_ecs.cc and aws_fake_logs.cc.
#include "tests/fakes/aws_fake.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/civil_time.h"
#include "aws/sigv4.h"
#include "rapidjson/error/en.h"
#include "tests/fakes/aws_fake_internal.h"
#include "util/strings.h"

namespace delegate::testing {

namespace aws_fake {

Reply Error(int status, std::string code, std::string message) {
  Reply r;
  r.status = status;
  r.code = std::move(code);
  r.message = std::move(message);
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  Put(w, "__type", r.code);
  Put(w, "message", r.message);
  w.EndObject();
  r.body = buffer.GetString();
  return r;
}

Reply ClientError(std::string message) {
  return Error(400, "ClientException", std::move(message));
}

Reply InvalidParameter(std::string message) {
  return Error(400, "InvalidParameterException", std::move(message));
}

std::string Answer(const std::function<void(JsonWriter&)>& members) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  w.StartObject();
  members(w);
  w.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize());
}

Reply Ok(const std::function<void(JsonWriter&)>& members) {
  Reply r;
  r.body = Answer(members);
  return r;
}

std::string PageToken(size_t offset) {
  return absl::StrCat("fake-page-", offset, "-",
                      std::hash<size_t>()(offset * 7919) % 100000);
}

std::optional<Reply> PageRange(const rapidjson::Value& body, size_t total,
                               const char* limit_member, int max_allowed,
                               size_t* begin, size_t* end) {
  const int64_t limit = Int(body, limit_member).value_or(max_allowed);
  if (limit < 1 || limit > max_allowed) {
    return InvalidParameter(absl::StrCat(
        limit_member, " must be between 1 and ", max_allowed, ", not ", limit));
  }
  *begin = 0;
  if (const std::string token = Str(body, "nextToken"); !token.empty()) {
    std::vector<std::string> parts = absl::StrSplit(token, '-');
    size_t offset = 0;
    if (parts.size() != 4 || !absl::SimpleAtoi(parts[2], &offset) ||
        PageToken(offset) != token || offset > total) {
      return InvalidParameter(
          "The specified nextToken is invalid: pass one that a previous "
          "call of the same operation, with the same filters, returned.");
    }
    *begin = offset;
  }
  *end = std::min(total, *begin + static_cast<size_t>(limit));
  return std::nullopt;
}

Reply PagedList(const rapidjson::Value& body,
                const std::vector<std::string>& items, const char* key,
                const char* limit_member, int max_allowed) {
  size_t begin = 0;
  size_t end = 0;
  if (std::optional<Reply> bad = PageRange(body, items.size(), limit_member,
                                           max_allowed, &begin, &end)) {
    return *bad;
  }
  return Ok([&](JsonWriter& w) {
    PutStrings(
        w, key,
        std::vector<std::string>(items.begin() + begin, items.begin() + end));
    if (end < items.size()) Put(w, "nextToken", PageToken(end));
  });
}

void Put(JsonWriter& w, std::string_view key, std::string_view value) {
  w.Key(key.data(), static_cast<rapidjson::SizeType>(key.size()));
  w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
}

void PutTags(JsonWriter& w, const std::map<std::string, std::string>& tags) {
  PutPairs(w, "tags", tags, "key", "value");
}

void PutInt(JsonWriter& w, std::string_view key, int64_t value) {
  w.Key(key.data(), static_cast<rapidjson::SizeType>(key.size()));
  w.Int64(value);
}

void PutBool(JsonWriter& w, std::string_view key, bool value) {
  w.Key(key.data(), static_cast<rapidjson::SizeType>(key.size()));
  w.Bool(value);
}

void PutTime(JsonWriter& w, std::string_view key, absl::Time t) {
  if (t == kUnset) return;
  w.Key(key.data(), static_cast<rapidjson::SizeType>(key.size()));
  w.Double(static_cast<double>(absl::ToUnixMillis(t)) / 1000.0);
}

void PutStrings(JsonWriter& w, std::string_view key,
                const std::vector<std::string>& values) {
  w.Key(key.data(), static_cast<rapidjson::SizeType>(key.size()));
  w.StartArray();
  for (const std::string& v : values) {
    w.String(v.data(), static_cast<rapidjson::SizeType>(v.size()));
  }
  w.EndArray();
}

std::string Str(const rapidjson::Value& v, const char* name) {
  if (!v.IsObject()) return "";
  auto it = v.FindMember(name);
  if (it == v.MemberEnd() || !it->value.IsString()) return "";
  return std::string(it->value.GetString(), it->value.GetStringLength());
}

std::optional<int64_t> Int(const rapidjson::Value& v, const char* name) {
  if (!v.IsObject()) return std::nullopt;
  auto it = v.FindMember(name);
  if (it == v.MemberEnd() || !it->value.IsInt64()) return std::nullopt;
  return it->value.GetInt64();
}

bool Bool(const rapidjson::Value& v, const char* name, bool otherwise) {
  if (!v.IsObject()) return otherwise;
  auto it = v.FindMember(name);
  if (it == v.MemberEnd() || !it->value.IsBool()) return otherwise;
  return it->value.GetBool();
}

std::vector<std::string> Strings(const rapidjson::Value& v, const char* name) {
  std::vector<std::string> out;
  if (const rapidjson::Value* a = Array(v, name)) {
    for (const auto& s : a->GetArray()) {
      if (s.IsString()) out.emplace_back(s.GetString(), s.GetStringLength());
    }
  }
  return out;
}

const rapidjson::Value* Object(const rapidjson::Value& v, const char* name) {
  if (!v.IsObject()) return nullptr;
  auto it = v.FindMember(name);
  if (it == v.MemberEnd() || !it->value.IsObject()) return nullptr;
  return &it->value;
}

const rapidjson::Value* Array(const rapidjson::Value& v, const char* name) {
  if (!v.IsObject()) return nullptr;
  auto it = v.FindMember(name);
  if (it == v.MemberEnd() || !it->value.IsArray()) return nullptr;
  return &it->value;
}

std::string ToJson(const rapidjson::Value& v) {
  rapidjson::StringBuffer buffer;
  JsonWriter w(buffer);
  v.Accept(w);
  return std::string(buffer.GetString(), buffer.GetSize());
}

namespace {

constexpr char kJsonType[] = "application/x-amz-json-1.1";
constexpr absl::Duration kMaxSkew = absl::Minutes(15);

// Refusals that come from the state of a resource, which a correct client
// meets and handles (CreateLogGroup on an existing group, PutLogEvents to a
// stream it must recreate); they are not recorded in Rejected().
bool IsStateRefusal(const std::string& code) {
  return code == "ResourceAlreadyExistsException" ||
         code == "ResourceNotFoundException";
}

http::ServerResponse Respond(const Reply& reply, const std::string& request_id,
                             absl::Time now) {
  http::ServerResponse r;
  r.status = reply.status;
  r.content_type = kJsonType;
  r.body = reply.body;
  r.headers.emplace_back("x-amzn-RequestId", request_id);
  r.headers.emplace_back("Date", absl::FormatTime("%a, %d %b %Y %H:%M:%S GMT",
                                                  now, absl::UTCTimeZone()));
  return r;
}

http::ServerResponse PlainJson(int status, std::string body) {
  http::ServerResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

std::string Iso8601(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

// What a SigV4 Authorization header says.
struct Authorization {
  std::string access_key_id;
  std::string date;  // of the scope
  std::string region;
  std::string service;
  std::string signed_headers;
  std::string signature;
};

// "20150830T123600Z" (absl::ParseTime's %Y would take all eight digits).
std::optional<absl::Time> ParseAmzDate(const std::string& text) {
  if (text.size() != 16 || text[8] != 'T' || text[15] != 'Z') {
    return std::nullopt;
  }
  int fields[6];
  const int offsets[6][2] = {{0, 4}, {4, 2}, {6, 2}, {9, 2}, {11, 2}, {13, 2}};
  for (int i = 0; i < 6; ++i) {
    if (!absl::SimpleAtoi(text.substr(offsets[i][0], offsets[i][1]),
                          &fields[i])) {
      return std::nullopt;
    }
  }
  const absl::CivilSecond civil(fields[0], fields[1], fields[2], fields[3],
                                fields[4], fields[5]);
  if (civil.month() != fields[1] || civil.day() != fields[2] ||
      civil.hour() != fields[3] || civil.minute() != fields[4] ||
      civil.second() != fields[5]) {
    return std::nullopt;  // out of range, normalised away
  }
  return absl::FromCivil(civil, absl::UTCTimeZone());
}

std::optional<Reply> ParseAuthorization(std::string_view header,
                                        Authorization* out) {
  constexpr std::string_view kAlgorithm = "AWS4-HMAC-SHA256 ";
  if (!absl::StartsWith(AbslView(header), AbslView(kAlgorithm))) {
    return Error(400, "IncompleteSignatureException",
                 "Unsupported Authorization header: it must start with "
                 "'AWS4-HMAC-SHA256 Credential='");
  }
  std::map<std::string, std::string> params;
  for (absl::string_view part :
       absl::StrSplit(AbslView(header.substr(kAlgorithm.size())), ',')) {
    part = absl::StripAsciiWhitespace(part);
    const size_t eq = part.find('=');
    if (eq == absl::string_view::npos) continue;
    params[std::string(part.substr(0, eq))] = std::string(part.substr(eq + 1));
  }
  std::vector<std::string> missing;
  for (const char* name : {"Credential", "SignedHeaders", "Signature"}) {
    if (params[name].empty()) {
      missing.push_back(absl::StrCat("Authorization header requires '", name,
                                     "' parameter."));
    }
  }
  if (!missing.empty()) {
    return Error(400, "IncompleteSignatureException",
                 absl::StrJoin(missing, " "));
  }
  std::vector<std::string> scope = absl::StrSplit(params["Credential"], '/');
  if (scope.size() != 5 || scope[4] != "aws4_request") {
    return Error(400, "IncompleteSignatureException",
                 "Credential must have the form "
                 "ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request");
  }
  out->access_key_id = scope[0];
  out->date = scope[1];
  out->region = scope[2];
  out->service = scope[3];
  out->signed_headers = params["SignedHeaders"];
  out->signature = params["Signature"];
  return std::nullopt;
}

}  // namespace

std::string Fake::RandomHex(size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(kDigits[rng() % 16]);
  return out;
}

std::string Fake::RegionalArn(std::string_view service,
                              std::string_view resource) const {
  return absl::StrCat("arn:aws:", AbslView(service), ":", options.region, ":",
                      options.account_id, ":", AbslView(resource));
}

int64_t Fake::NowMs() const { return absl::ToUnixMillis(clock->Now()); }

namespace {

// Verifies the SigV4 signature of an AWS JSON request for `service` (the
// signing name); nullopt when it is good.
std::optional<Reply> Authenticate(Fake& fake, const http::ServerRequest& req,
                                  const std::string& service) {
  const std::string_view header = req.header("Authorization");
  if (header.empty()) {
    return Error(400, "MissingAuthenticationTokenException",
                 "Missing Authentication Token");
  }
  Authorization auth;
  if (std::optional<Reply> bad = ParseAuthorization(header, &auth)) return bad;
  const std::string amz_date(req.header("X-Amz-Date"));
  if (amz_date.empty()) {
    return Error(400, "IncompleteSignatureException",
                 "Authorization header requires existence of either a "
                 "'X-Amz-Date' or a 'Date' header.");
  }
  std::optional<absl::Time> signed_at = ParseAmzDate(amz_date);
  if (!signed_at) {
    return Error(400, "IncompleteSignatureException",
                 absl::StrCat("X-Amz-Date '", amz_date,
                              "' must be in the ISO8601 basic format "
                              "yyyyMMdd'T'HHmmss'Z'"));
  }
  std::optional<FakeAwsCredential> credential;
  {
    absl::MutexLock lock(&fake.mu);
    auto it = fake.credentials.find(auth.access_key_id);
    if (it != fake.credentials.end()) credential = it->second;
  }
  if (!credential) {
    return Error(403, "UnrecognizedClientException",
                 "The security token included in the request is invalid.");
  }
  const absl::Time now = fake.clock->Now();
  if (*signed_at < now - kMaxSkew) {
    return Error(
        400, "InvalidSignatureException",
        absl::StrCat("Signature expired: ", amz_date, " is now earlier than ",
                     aws::AmzDate(now - kMaxSkew), " (", aws::AmzDate(now),
                     " - 15 min.)"));
  }
  if (*signed_at > now + kMaxSkew) {
    return Error(
        400, "InvalidSignatureException",
        absl::StrCat("Signature not yet current: ", amz_date,
                     " is still later than ", aws::AmzDate(now + kMaxSkew),
                     " (", aws::AmzDate(now), " + 15 min.)"));
  }
  const std::string expected_scope =
      absl::StrCat(amz_date.substr(0, 8), "/", fake.options.region, "/",
                   service, "/aws4_request");
  if (auth.date != amz_date.substr(0, 8)) {
    return Error(403, "InvalidSignatureException",
                 absl::StrCat("Date in Credential scope does not match "
                              "YYYYMMDD from ISO-8601 version of date from "
                              "HTTP: '",
                              auth.date, "' != '", amz_date.substr(0, 8),
                              "', from '", amz_date, "'."));
  }
  if (auth.region != fake.options.region) {
    return Error(
        403, "InvalidSignatureException",
        absl::StrCat("Credential should be scoped to a valid region, "
                     "not '",
                     auth.region, "'. Expected scope ", expected_scope, "."));
  }
  if (auth.service != service) {
    return Error(403, "InvalidSignatureException",
                 absl::StrCat("Credential should be scoped to correct "
                              "service: '",
                              service, "', not '", auth.service,
                              "'. Expected scope ", expected_scope, "."));
  }
  std::vector<std::string> signed_list =
      absl::StrSplit(auth.signed_headers, ';');
  const std::set<std::string> signed_names(signed_list.begin(),
                                           signed_list.end());
  for (const auto& [name, shown] :
       std::vector<std::pair<const char*, const char*>>{
           {"host", "'Host' or ':authority'"},
           {"x-amz-date", "'X-Amz-Date'"},
           {"x-amz-target", "'X-Amz-Target'"},
           {"content-type", "'Content-Type'"}}) {
    if (!signed_names.contains(name)) {
      return Error(403, "InvalidSignatureException",
                   absl::StrCat(shown,
                                " must be a 'SignedHeader' in the AWS "
                                "Authorization."));
    }
  }
  const std::string token(req.header("X-Amz-Security-Token"));
  if (token != credential->session_token) {
    return Error(403, "UnrecognizedClientException",
                 "The security token included in the request is invalid.");
  }
  if (now >= credential->expires) {
    return Error(403, "ExpiredTokenException",
                 "The security token included in the request is expired");
  }

  aws::SignableRequest signable;
  signable.method = req.method;
  signable.path = req.path;
  if (const size_t q = req.target.find('?'); q != std::string::npos) {
    signable.query = req.target.substr(q + 1);
  }
  for (const auto& [name, value] : req.headers) {
    if (signed_names.contains(absl::AsciiStrToLower(name))) {
      signable.headers.emplace_back(name, value);
    }
  }
  signable.body = req.body;
  aws::SigningOptions signing;
  signing.region = auth.region;
  signing.service = auth.service;
  std::string computed_headers;
  const std::string canonical =
      aws::CanonicalRequest(signable, signing, &computed_headers);
  const std::string signature = aws::Signature(
      SecretString(credential->secret_access_key), auth.date, auth.region,
      auth.service,
      aws::StringToSign(canonical, amz_date,
                        absl::StrCat(auth.date, "/", auth.region, "/",
                                     auth.service, "/aws4_request")));
  if (computed_headers != auth.signed_headers || signature != auth.signature) {
    return Error(403, "InvalidSignatureException",
                 "The request signature we calculated does not match the "
                 "signature you provided. Check your AWS Secret Access Key "
                 "and signing method. Consult the service documentation for "
                 "details.");
  }
  return std::nullopt;
}

// The body's problems as the service reports them; nullopt when valid.
std::optional<Reply> Validate(const AwsModel& model, bool ecs,
                              const std::string& op, const std::string& body) {
  std::vector<ModelProblem> problems = model.Check(op, body);
  if (problems.empty()) return std::nullopt;
  std::vector<std::string> serialization;
  std::vector<std::string> constraint;
  for (ModelProblem& p : problems) {
    (p.kind == ModelProblem::Kind::kSerialization ? serialization : constraint)
        .push_back(std::move(p.text));
  }
  if (!serialization.empty()) {
    return Error(400, "SerializationException",
                 absl::StrJoin(serialization, "; "));
  }
  return Error(400, ecs ? "ClientException" : "InvalidParameterException",
               absl::StrCat(constraint.size(), " validation error",
                            constraint.size() == 1 ? "" : "s",
                            " detected: ", absl::StrJoin(constraint, "; ")));
}

}  // namespace

http::ServerResponse Fake::Handle(const http::ServerRequest& req) {
  if (req.method == "GET") {
    if (absl::StartsWith(req.path, "/v2/credentials/")) {
      const std::string id = req.path.substr(strlen("/v2/credentials/"));
      absl::MutexLock lock(&mu);
      auto it = credential_endpoints.find(id);
      if (it == credential_endpoints.end()) {
        return PlainJson(
            404,
            R"({"code":"NotFound","message":"no such credentials endpoint"})");
      }
      const std::string& want = it->second.authorization_token;
      const std::string_view got = req.header("Authorization");
      if (!want.empty() && got.empty()) {
        return PlainJson(
            401,
            R"({"code":"Unauthorized","message":"an Authorization header is required"})");
      }
      if (!want.empty() && got != want) {
        return PlainJson(
            403,
            R"({"code":"AccessDenied","message":"the Authorization header is not the token this endpoint expects"})");
      }
      ++credential_fetches;
      FakeAwsCredential c;
      c.access_key_id = "ASIA" + absl::AsciiStrToUpper(RandomHex(16));
      c.secret_access_key = RandomHex(40);
      c.session_token = "FakeSessionToken" + RandomHex(64);
      c.expires = clock->Now() + it->second.lifetime;
      credentials[c.access_key_id] = c;
      issued_credentials.push_back(c.access_key_id);
      rapidjson::StringBuffer buffer;
      JsonWriter w(buffer);
      w.StartObject();
      Put(w, "RoleArn",
          absl::StrCat("arn:aws:iam::", options.account_id,
                       ":role/fake-task-role"));
      Put(w, "AccessKeyId", c.access_key_id);
      Put(w, "SecretAccessKey", c.secret_access_key);
      Put(w, "Token", c.session_token);
      Put(w, "Expiration", Iso8601(c.expires));
      w.EndObject();
      return PlainJson(200, buffer.GetString());
    }
    if (absl::StartsWith(req.path, "/v4/")) {
      std::vector<std::string> parts =
          absl::StrSplit(req.path.substr(4), '/', absl::SkipEmpty());
      absl::MutexLock lock(&mu);
      auto it = parts.empty() ? metadata_endpoints.end()
                              : metadata_endpoints.find(parts[0]);
      if (it == metadata_endpoints.end() || !tasks.contains(it->second)) {
        return PlainJson(404, R"({"error":"no such task metadata endpoint"})");
      }
      const TaskState& task = tasks.at(it->second);
      const std::string rest =
          absl::StrJoin(parts.begin() + 1, parts.end(), "/");
      if (rest.empty())
        return PlainJson(200, OwnTaskMetadata(task, false, true));
      if (rest == "task")
        return PlainJson(200, OwnTaskMetadata(task, false, false));
      if (rest == "taskWithTags") {
        return PlainJson(200, OwnTaskMetadata(task, true, false));
      }
      if (rest == "stats" || rest == "task/stats") return PlainJson(200, "{}");
      return PlainJson(404, R"({"error":"no such task metadata path"})");
    }
  }

  const absl::Time now = clock->Now();
  std::string request_id;
  {
    absl::MutexLock lock(&mu);
    request_id =
        absl::StrCat(RandomHex(8), "-", RandomHex(4), "-4", RandomHex(3), "-a",
                     RandomHex(3), "-", RandomHex(12));
  }
  const std::string target(req.header("X-Amz-Target"));
  const size_t dot = target.find('.');
  const std::string prefix = target.substr(0, dot);
  const std::string op = dot == std::string::npos ? "" : target.substr(dot + 1);
  const AwsModel* model = nullptr;
  bool ecs = false;
  if (!op.empty() && prefix == ecs_model->target_prefix()) {
    model = &*ecs_model;
    ecs = true;
  } else if (!op.empty() && prefix == logs_model->target_prefix()) {
    model = &*logs_model;
  }

  auto refuse = [&](const std::string& what, Reply reply) {
    absl::MutexLock lock(&mu);
    rejected.push_back({what, reply.status, reply.code, reply.message});
    return Respond(reply, request_id, now);
  };
  if (req.method != "POST" || req.path != "/" || model == nullptr) {
    return refuse(
        target.empty() ? absl::StrCat(req.method, " ", req.path) : target,
        Error(400, "UnknownOperationException",
              absl::StrCat("Expected POST / with X-Amz-Target ",
                           ecs_model->target_prefix(), ".OPERATION or ",
                           logs_model->target_prefix(), ".OPERATION; got ",
                           req.method, " ", req.path, " with X-Amz-Target '",
                           target, "'")));
  }
  const std::string content_type(req.header("Content-Type"));
  if (content_type != kJsonType &&
      !absl::StartsWith(content_type, absl::StrCat(kJsonType, ";"))) {
    return refuse(op, Error(400, "UnknownOperationException",
                            absl::StrCat("Content-Type must be ", kJsonType,
                                         ", not '", content_type, "'")));
  }
  if (std::optional<Reply> failure =
          Authenticate(*this, req, model->signing_name())) {
    return refuse(op, *failure);
  }
  if (!model->HasOperation(op)) {
    return refuse(op, Error(400, "UnknownOperationException",
                            absl::StrCat(op, " is not an operation of ",
                                         model->signing_name())));
  }
  const Operation fn = ecs ? EcsOperation(op) : LogsOperation(op);
  std::optional<Reply> invalid = Validate(*model, ecs, op, req.body);

  Reply reply;
  std::vector<std::string> launches;
  {
    absl::MutexLock lock(&mu);
    calls.push_back(op);
    auto injection = std::find_if(
        injections.begin(), injections.end(), [&](const Injection& i) {
          return i.remaining > 0 && (i.operation == op || i.operation == "*");
        });
    if (injection != injections.end()) {
      --injection->remaining;
      return Respond(Error(injection->status, injection->code,
                           injection->code == "ThrottlingException"
                               ? "Rate exceeded"
                               : "Injected by the AWS fake"),
                     request_id, now);
    }
    if (invalid) {
      reply = *invalid;
    } else if (fn == nullptr) {
      reply = Error(400, "UnknownOperationException",
                    absl::StrCat("The AWS fake does not implement ", op,
                                 "; add it to tests/fakes/aws_fake_",
                                 ecs ? "ecs" : "logs", ".cc"));
    } else {
      rapidjson::Document doc;
      doc.Parse(req.body.data(), req.body.size());
      launches = Advance(now);
      reply = fn(*this, doc, req.body);
      std::vector<std::string> more = Advance(now);
      launches.insert(launches.end(), more.begin(), more.end());
    }
    if (reply.status != 200 && !IsStateRefusal(reply.code)) {
      rejected.push_back({op, reply.status, reply.code, reply.message});
    }
  }
  for (const std::string& arn : launches) StartRunner(arn);
  return Respond(reply, request_id, now);
}

void Fake::Tick() {
  while (true) {
    std::vector<std::string> launches;
    {
      absl::MutexLock lock(&mu);
      // Real time: a FakeClock only moves when the test moves it.
      mu.AwaitWithTimeout(absl::Condition(&shutting_down),
                          absl::Milliseconds(10));
      if (shutting_down) return;
      launches = Advance(clock->Now());
    }
    for (const std::string& arn : launches) StartRunner(arn);
  }
}

}  // namespace aws_fake

struct FakeAws::Impl : aws_fake::Fake {};

using aws_fake::Fake;

std::string AwsTestdataDir() {
  if (const char* env = getenv("DELEGATE_AWS_TESTDATA"); env && *env) {
    return env;
  }
#ifdef DELEGATE_AWS_TESTDATA
  return DELEGATE_AWS_TESTDATA;
#else
  return "../shared/testdata/aws";
#endif
}

FakeAws::FakeAws(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<FakeAws>> FakeAws::Start(
    FakeAwsOptions options) {
  auto impl = std::make_unique<Impl>();
  if (options.testdata_dir.empty()) options.testdata_dir = AwsTestdataDir();
  namespace fs = std::filesystem;
  absl::StatusOr<AwsModel> ecs = AwsModel::Load(
      (fs::path(options.testdata_dir) / "ecs-model" / "service-2.json")
          .string());
  if (!ecs.ok()) return ecs.status();
  absl::StatusOr<AwsModel> logs = AwsModel::Load(
      (fs::path(options.testdata_dir) / "logs-model" / "service-2.json")
          .string());
  if (!logs.ok()) return logs.status();
  impl->ecs_model = *std::move(ecs);
  impl->logs_model = *std::move(logs);
  impl->clock = options.clock ? options.clock : &Clock::Real();
  {
    absl::MutexLock lock(&impl->mu);
    impl->rng.seed(std::random_device()());
    impl->id = "aws-fake-" + impl->RandomHex(12);
    for (const FakeAwsCredential& c : options.credentials) {
      impl->credentials[c.access_key_id] = c;
    }
  }
  if (!options.docker_host.empty()) {
    absl::StatusOr<docker::Endpoint> endpoint =
        docker::ParseDockerHost(options.docker_host);
    if (!endpoint.ok()) return endpoint.status();
    absl::StatusOr<std::unique_ptr<docker::DockerClient>> client =
        docker::DockerClient::Connect(*endpoint, absl::Seconds(5));
    if (!client.ok()) return client.status();
    impl->docker = *std::move(client);
  }
  impl->options = std::move(options);
  if (impl->docker) {
    if (absl::Status s = impl->CreateDockerNetwork(); !s.ok()) return s;
  }
  Fake* fake = impl.get();
  http::ServerOptions server_options;
  absl::StatusOr<std::unique_ptr<http::HttpServer>> server =
      http::HttpServer::Start(server_options,
                              [fake](const http::ServerRequest& request) {
                                return fake->Handle(request);
                              });
  if (!server.ok()) {
    impl->RemoveDockerLeftovers();
    return server.status();
  }
  impl->server = *std::move(server);
  impl->ticker = std::thread([fake] { fake->Tick(); });
  return std::unique_ptr<FakeAws>(new FakeAws(std::move(impl)));
}

FakeAws::~FakeAws() {
  impl_->server->Stop();
  impl_->closing = true;
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->shutting_down = true;
  }
  impl_->ticker.join();
  std::vector<std::thread> runners;
  {
    absl::MutexLock lock(&impl_->threads_mu);
    runners.swap(impl_->runners);
  }
  for (std::thread& t : runners) t.join();
  impl_->RemoveDockerLeftovers();
}

std::string FakeAws::url() const { return impl_->server->url(); }

std::string FakeAws::docker_label() const {
  return "delegate.test.aws-fake=" + impl_->id;
}

std::string FakeAws::region() const { return impl_->options.region; }

void FakeAws::SetProvisioningFor(absl::Duration duration) {
  absl::MutexLock lock(&impl_->mu);
  impl_->options.provisioning_for = duration;
}

void FakeAws::AddCredential(FakeAwsCredential credential) {
  absl::MutexLock lock(&impl_->mu);
  impl_->credentials[credential.access_key_id] = std::move(credential);
}

void FakeAws::ExpireCredential(const std::string& access_key_id) {
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->credentials.find(access_key_id);
  if (it != impl_->credentials.end()) it->second.expires = impl_->clock->Now();
}

std::string FakeAws::ServeContainerCredentials(std::string authorization_token,
                                               absl::Duration lifetime) {
  absl::MutexLock lock(&impl_->mu);
  const std::string id = impl_->RandomHex(32);
  impl_->credential_endpoints[id] = {std::move(authorization_token), lifetime};
  return absl::StrCat(url(), "/v2/credentials/", id);
}

int FakeAws::container_credential_fetches() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->credential_fetches;
}

void FakeAws::ExpireIssuedContainerCredentials() {
  absl::MutexLock lock(&impl_->mu);
  const absl::Time now = impl_->clock->Now();
  for (const std::string& key : impl_->issued_credentials) {
    impl_->credentials[key].expires = now;
  }
}

std::string FakeAws::ServeOwnTask(const std::string& cluster,
                                  const std::string& launch_type,
                                  const std::string& subnet_id,
                                  const std::string& security_group_id) {
  absl::MutexLock lock(&impl_->mu);
  const std::string arn =
      impl_->OwnTask(cluster, launch_type, subnet_id, security_group_id);
  const std::string id = impl_->RandomHex(32) + "-" + impl_->RandomHex(10);
  impl_->metadata_endpoints[id] = arn;
  return absl::StrCat(url(), "/v4/", id);
}

void FakeAws::InjectError(const std::string& operation, int status,
                          const std::string& code, int count) {
  absl::MutexLock lock(&impl_->mu);
  impl_->injections.push_back({operation, status, code, count});
}

std::vector<std::string> FakeAws::Calls() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->calls;
}

int FakeAws::CallCount(const std::string& operation) const {
  absl::MutexLock lock(&impl_->mu);
  return static_cast<int>(
      std::count(impl_->calls.begin(), impl_->calls.end(), operation));
}

std::vector<FakeRejection> FakeAws::Rejected() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->rejected;
}

std::vector<FakeTaskDefinition> FakeAws::TaskDefinitions() const {
  absl::MutexLock lock(&impl_->mu);
  std::vector<FakeTaskDefinition> out;
  for (const auto& [family, revisions] : impl_->families) {
    out.insert(out.end(), revisions.begin(), revisions.end());
  }
  return out;
}

std::vector<FakeTask> FakeAws::Tasks() const {
  std::vector<std::string> launches;
  std::vector<FakeTask> out;
  {
    absl::MutexLock lock(&impl_->mu);
    launches = impl_->Advance(impl_->clock->Now());
    for (const std::string& arn : impl_->task_order) {
      const aws_fake::TaskState& t = impl_->tasks.at(arn);
      FakeTask task = t.pub;
      for (const aws_fake::TaskContainer& c : t.containers) {
        task.containers.push_back(c.spec);
        if (c.exit_code) task.exit_codes[c.spec.name] = *c.exit_code;
      }
      out.push_back(std::move(task));
    }
  }
  for (const std::string& arn : launches) impl_->StartRunner(arn);
  return out;
}

std::vector<std::string> FakeAws::LogGroups() const {
  absl::MutexLock lock(&impl_->mu);
  std::vector<std::string> out;
  for (const auto& [name, group] : impl_->log_groups) out.push_back(name);
  return out;
}

std::vector<std::string> FakeAws::LogStreams(const std::string& group) const {
  absl::MutexLock lock(&impl_->mu);
  std::vector<std::string> out;
  auto it = impl_->log_groups.find(group);
  if (it == impl_->log_groups.end()) return out;
  for (const auto& [name, stream] : it->second.streams) out.push_back(name);
  return out;
}

std::vector<FakeLogEvent> FakeAws::LogEvents(const std::string& group,
                                             const std::string& stream) const {
  absl::MutexLock lock(&impl_->mu);
  std::vector<FakeLogEvent> out;
  auto g = impl_->log_groups.find(group);
  if (g == impl_->log_groups.end()) return out;
  auto s = g->second.streams.find(stream);
  if (s == g->second.streams.end()) return out;
  for (const aws_fake::StoredLogEvent& e : s->second.events) {
    out.push_back({e.timestamp, e.message});
  }
  return out;
}

absl::StatusOr<http::Response> SignedAwsCall(
    http::HttpClient& client, const std::string& url,
    const FakeAwsCredential& credential, const std::string& region,
    const std::string& target, const std::string& body, absl::Time time) {
  std::string host = url;
  if (const size_t scheme = host.find("://"); scheme != std::string::npos) {
    host = host.substr(scheme + 3);
  }
  host = host.substr(0, host.find('/'));
  aws::SignableRequest signable;
  signable.headers = {{"Host", host},
                      {"Content-Type", "application/x-amz-json-1.1"},
                      {"X-Amz-Target", target}};
  signable.body = body;
  aws::Credentials credentials{credential.access_key_id,
                               SecretString(credential.secret_access_key),
                               SecretString(credential.session_token)};
  aws::SigningOptions signing;
  signing.region = region;
  signing.service = absl::StartsWith(target, "Logs_20140328.") ? "logs" : "ecs";
  signing.time = time;
  aws::Sign(credentials, signing, signable);
  http::Request request;
  request.method = "POST";
  request.url = absl::StrCat(url, url.ends_with('/') ? "" : "/");
  request.headers = signable.headers;
  request.body = body;
  request.timeout = absl::Seconds(30);
  return client.Perform(request);
}

std::string AwsErrorType(const http::Response& response) {
  rapidjson::Document doc;
  doc.Parse(response.body.data(), response.body.size());
  std::string type = aws_fake::Str(doc, "__type");
  if (const size_t hash = type.rfind('#'); hash != std::string::npos) {
    type = type.substr(hash + 1);
  }
  return type;
}

FakeAwsClient::FakeAwsClient(const FakeAws& fake, FakeAwsCredential credential,
                             Clock* clock)
    : url_(fake.url()),
      region_(fake.region()),
      credential_(std::move(credential)),
      clock_(clock ? clock : &Clock::Real()) {}

http::Response FakeAwsClient::Call(const std::string& target,
                                   const std::string& body) {
  absl::StatusOr<http::Response> r = SignedAwsCall(
      http_, url_, credential_, region_, target, body, clock_->Now());
  if (r.ok()) return *std::move(r);
  http::Response failed;
  failed.body = std::string(r.status().message());
  return failed;
}

http::Response FakeAwsClient::Ecs(const std::string& operation,
                                  const std::string& body) {
  return Call("AmazonEC2ContainerServiceV20141113." + operation, body);
}

http::Response FakeAwsClient::Logs(const std::string& operation,
                                   const std::string& body) {
  return Call("Logs_20140328." + operation, body);
}

std::string FakeAwsClient::WaitForTask(const std::string& cluster,
                                       const std::string& task_arn,
                                       const std::string& last_status,
                                       absl::Duration timeout) {
  rapidjson::StringBuffer buffer;
  aws_fake::JsonWriter w(buffer);
  w.StartObject();
  aws_fake::Put(w, "cluster", cluster);
  aws_fake::PutStrings(w, "tasks", {task_arn});
  w.EndObject();
  const std::string request = buffer.GetString();
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    http::Response r = Ecs("DescribeTasks", request);
    rapidjson::Document doc;
    doc.Parse(r.body.data(), r.body.size());
    const rapidjson::Value* tasks = aws_fake::Array(doc, "tasks");
    if (r.status == 200 && tasks && tasks->Size() == 1 &&
        aws_fake::Str((*tasks)[0], "lastStatus") == last_status) {
      return r.body;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return "";
}

}  // namespace delegate::testing
