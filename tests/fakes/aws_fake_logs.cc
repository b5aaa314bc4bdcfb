// The CloudWatch Logs half of the AWS fake: groups, streams, PutLogEvents
// with the service's batch rules, GetLogEvents with its paging tokens.
#include <algorithm>
#include <limits>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tests/fakes/aws_fake_internal.h"

namespace delegate::testing::aws_fake {
namespace {

constexpr int64_t kMaxBatchBytes = 1'048'576;
constexpr int64_t kEventOverhead = 26;
constexpr int64_t kHourMs = 3'600'000;
constexpr int64_t kDayMs = 24 * kHourMs;

Reply GroupNotFound() {
  return Error(400, "ResourceNotFoundException",
               "The specified log group does not exist.");
}

Reply StreamNotFound() {
  return Error(400, "ResourceNotFoundException",
               "The specified log stream does not exist.");
}

// The group a request names with logGroupName or logGroupIdentifier (a name
// or an ARN); an error when it names none, both, or one that does not exist.
std::optional<Reply> FindGroup(Fake& fake, const rapidjson::Value& body,
                               LogGroupState** group)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  std::string name = Str(body, "logGroupName");
  const std::string identifier = Str(body, "logGroupIdentifier");
  if (!name.empty() && !identifier.empty()) {
    return InvalidParameter(
        "LogGroup name and LogGroup ARN are mutually exclusive parameters.");
  }
  if (name.empty()) {
    name = identifier;
    const std::string arn = fake.RegionalArn("logs", "log-group:");
    if (absl::StartsWith(name, arn)) {
      name = name.substr(arn.size());
      if (absl::EndsWith(name, ":*")) name.resize(name.size() - 2);
    } else if (absl::StartsWith(name, "arn:")) {
      return InvalidParameter(absl::StrCat("logGroupIdentifier '", identifier,
                                           "' is not an ARN of a log "
                                           "group of this account and region (",
                                           arn, "NAME)."));
    }
  }
  if (name.empty()) {
    return InvalidParameter(
        "Either logGroupName or logGroupIdentifier must be specified.");
  }
  auto it = fake.log_groups.find(name);
  if (it == fake.log_groups.end()) return GroupNotFound();
  *group = &it->second;
  return std::nullopt;
}

std::string SequenceToken(uint64_t n) {
  std::string digits = absl::StrCat(n);
  return "4959" + std::string(52 - std::min<size_t>(52, digits.size()), '0') +
         digits;
}

// "f/00000000000000000012/s": the position 12 of a GetLogEvents reading.
std::string EventToken(char direction, size_t position) {
  std::string digits = absl::StrCat(position);
  return absl::StrCat(
      std::string(1, direction), "/",
      std::string(20 - std::min<size_t>(20, digits.size()), '0'), digits, "/s");
}

std::optional<std::pair<char, size_t>> ParseEventToken(const std::string& t) {
  if (t.size() < 5 || (t[0] != 'f' && t[0] != 'b') || t[1] != '/' ||
      !absl::EndsWith(t, "/s")) {
    return std::nullopt;
  }
  size_t position = 0;
  if (!absl::SimpleAtoi(t.substr(2, t.size() - 4), &position)) {
    return std::nullopt;
  }
  return std::make_pair(t[0], position);
}

Reply CreateLogGroup(Fake& fake, const rapidjson::Document& body,
                     const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  const std::string name = Str(body, "logGroupName");
  if (fake.log_groups.contains(name)) {
    return Error(400, "ResourceAlreadyExistsException",
                 "The specified log group already exists");
  }
  LogGroupState& group = fake.log_groups[name];
  group.created_ms = fake.NowMs();
  if (const rapidjson::Value* tags = Object(body, "tags")) {
    for (const auto& t : tags->GetObject()) {
      group.tags[t.name.GetString()] = t.value.GetString();
    }
  }
  return Ok([](JsonWriter&) {});
}

Reply DeleteLogGroup(Fake& fake, const rapidjson::Document& body,
                     const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  LogGroupState* group = nullptr;
  if (std::optional<Reply> bad = FindGroup(fake, body, &group)) return *bad;
  fake.log_groups.erase(Str(body, "logGroupName"));
  return Ok([](JsonWriter&) {});
}

Reply DescribeLogGroups(Fake& fake, const rapidjson::Document& body,
                        const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  const std::string prefix = Str(body, "logGroupNamePrefix");
  std::vector<const std::pair<const std::string, LogGroupState>*> groups;
  for (const auto& entry : fake.log_groups) {
    if (absl::StartsWith(entry.first, prefix)) groups.push_back(&entry);
  }
  size_t begin = 0;
  size_t end = 0;
  if (std::optional<Reply> bad =
          PageRange(body, groups.size(), "limit", 50, &begin, &end)) {
    return *bad;
  }
  return Ok([&](JsonWriter& w) {
    w.Key("logGroups");
    w.StartArray();
    for (size_t i = begin; i < end; ++i) {
      const auto& [name, group] = *groups[i];
      const std::string arn = fake.RegionalArn("logs", "log-group:" + name);
      w.StartObject();
      Put(w, "logGroupName", name);
      PutInt(w, "creationTime", group.created_ms);
      if (group.retention_days) {
        PutInt(w, "retentionInDays", *group.retention_days);
      }
      PutInt(w, "metricFilterCount", 0);
      Put(w, "arn", arn + ":*");
      PutInt(w, "storedBytes", 0);
      Put(w, "logGroupClass", "STANDARD");
      Put(w, "logGroupArn", arn);
      w.EndObject();
    }
    w.EndArray();
    if (end < groups.size()) Put(w, "nextToken", PageToken(end));
  });
}

Reply PutRetentionPolicy(Fake& fake, const rapidjson::Document& body,
                         const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  static const std::set<int64_t> kDays = {
      1,   3,   5,   7,   14,   30,   60,   90,   120,  150,  180,
      365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653};
  LogGroupState* group = nullptr;
  if (std::optional<Reply> bad = FindGroup(fake, body, &group)) return *bad;
  const int64_t days = Int(body, "retentionInDays").value_or(0);
  if (!kDays.contains(days)) {
    return InvalidParameter(absl::StrCat(
        "1 validation error detected: Value '", days,
        "' at 'retentionInDays' failed to satisfy constraint: Member must "
        "satisfy enum value set: [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, "
        "365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653]"));
  }
  group->retention_days = static_cast<int>(days);
  return Ok([](JsonWriter&) {});
}

Reply DeleteRetentionPolicy(Fake& fake, const rapidjson::Document& body,
                            const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  LogGroupState* group = nullptr;
  if (std::optional<Reply> bad = FindGroup(fake, body, &group)) return *bad;
  group->retention_days.reset();
  return Ok([](JsonWriter&) {});
}

Reply CreateLogStream(Fake& fake, const rapidjson::Document& body,
                      const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  LogGroupState* group = nullptr;
  if (std::optional<Reply> bad = FindGroup(fake, body, &group)) return *bad;
  const std::string name = Str(body, "logStreamName");
  if (group->streams.contains(name)) {
    return Error(400, "ResourceAlreadyExistsException",
                 "The specified log stream already exists");
  }
  group->streams[name].created_ms = fake.NowMs();
  return Ok([](JsonWriter&) {});
}

Reply DeleteLogStream(Fake& fake, const rapidjson::Document& body,
                      const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  LogGroupState* group = nullptr;
  if (std::optional<Reply> bad = FindGroup(fake, body, &group)) return *bad;
  if (group->streams.erase(Str(body, "logStreamName")) == 0) {
    return StreamNotFound();
  }
  return Ok([](JsonWriter&) {});
}

Reply DescribeLogStreams(Fake& fake, const rapidjson::Document& body,
                         const std::string&)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  LogGroupState* group = nullptr;
  if (std::optional<Reply> bad = FindGroup(fake, body, &group)) return *bad;
  const std::string prefix = Str(body, "logStreamNamePrefix");
  const bool by_time = Str(body, "orderBy") == "LastEventTime";
  if (by_time && !prefix.empty()) {
    return InvalidParameter(
        "Cannot order by LastEventTime with a logStreamNamePrefix.");
  }
  std::vector<const std::pair<const std::string, LogStreamState>*> streams;
  for (const auto& entry : group->streams) {
    if (absl::StartsWith(entry.first, prefix)) streams.push_back(&entry);
  }
  auto last_event = [](const LogStreamState& s) {
    int64_t last = 0;
    for (const StoredLogEvent& e : s.events) last = std::max(last, e.timestamp);
    return last;
  };
  if (by_time) {
    std::stable_sort(streams.begin(), streams.end(),
                     [&](const auto* a, const auto* b) {
                       return last_event(a->second) < last_event(b->second);
                     });
  }
  if (Bool(body, "descending", false)) {
    std::reverse(streams.begin(), streams.end());
  }
  size_t begin = 0;
  size_t end = 0;
  if (std::optional<Reply> bad =
          PageRange(body, streams.size(), "limit", 50, &begin, &end)) {
    return *bad;
  }
  const std::string group_name = Str(body, "logGroupName");
  return Ok([&](JsonWriter& w) {
    w.Key("logStreams");
    w.StartArray();
    for (size_t i = begin; i < end; ++i) {
      const auto& [name, stream] = *streams[i];
      w.StartObject();
      Put(w, "logStreamName", name);
      PutInt(w, "creationTime", stream.created_ms);
      if (!stream.events.empty()) {
        int64_t first = stream.events[0].timestamp;
        int64_t ingested = 0;
        for (const StoredLogEvent& e : stream.events) {
          first = std::min(first, e.timestamp);
          ingested = std::max(ingested, e.ingestion);
        }
        PutInt(w, "firstEventTimestamp", first);
        PutInt(w, "lastEventTimestamp", last_event(stream));
        PutInt(w, "lastIngestionTime", ingested);
      }
      Put(w, "uploadSequenceToken", SequenceToken(stream.sequence));
      Put(w, "arn",
          fake.RegionalArn("logs", absl::StrCat("log-group:", group_name,
                                                ":log-stream:", name)));
      PutInt(w, "storedBytes", 0);
      w.EndObject();
    }
    w.EndArray();
    if (end < streams.size()) Put(w, "nextToken", PageToken(end));
  });
}

Reply PutLogEvents(Fake& fake, const rapidjson::Document& body,
                   const std::string&) ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  auto g = fake.log_groups.find(Str(body, "logGroupName"));
  if (g == fake.log_groups.end()) return GroupNotFound();
  auto s = g->second.streams.find(Str(body, "logStreamName"));
  if (s == g->second.streams.end()) return StreamNotFound();
  const rapidjson::Value& events = body["logEvents"];
  int64_t bytes = 0;
  for (rapidjson::SizeType i = 0; i < events.Size(); ++i) {
    bytes += events[i]["message"].GetStringLength() + kEventOverhead;
    if (i > 0 && events[i]["timestamp"].GetInt64() <
                     events[i - 1]["timestamp"].GetInt64()) {
      return InvalidParameter(
          "Log events in a single PutLogEvents request must be in "
          "chronological order.");
    }
  }
  if (bytes > kMaxBatchBytes) {
    return InvalidParameter(absl::StrCat("Upload too large: ", bytes,
                                         " bytes exceeds limit of ",
                                         kMaxBatchBytes));
  }
  const int64_t now = fake.NowMs();
  const int64_t too_old_before = now - 14 * kDayMs;
  const int64_t expired_before =
      g->second.retention_days
          ? now - static_cast<int64_t>(*g->second.retention_days) * kDayMs
          : too_old_before;
  const int64_t too_new_after = now + 2 * kHourMs;
  std::optional<size_t> too_new_start;
  std::optional<size_t> too_old_end;
  std::optional<size_t> expired_end;
  std::vector<rapidjson::SizeType> accepted;
  for (rapidjson::SizeType i = 0; i < events.Size(); ++i) {
    const int64_t ts = events[i]["timestamp"].GetInt64();
    if (ts > too_new_after) {
      if (!too_new_start) too_new_start = i;
    } else if (ts < too_old_before) {
      too_old_end = i + 1;
    } else if (ts < expired_before) {
      expired_end = i + 1;
    } else {
      accepted.push_back(i);
    }
  }
  if (!accepted.empty() &&
      events[accepted.back()]["timestamp"].GetInt64() -
              events[accepted.front()]["timestamp"].GetInt64() >
          kDayMs) {
    return InvalidParameter(
        "The batch of log events in a single PutLogEvents request cannot "
        "span more than 24 hours.");
  }
  LogStreamState& stream = s->second;
  for (rapidjson::SizeType i : accepted) {
    stream.events.push_back({events[i]["timestamp"].GetInt64(), now,
                             events[i]["message"].GetString()});
  }
  ++stream.sequence;
  return Ok([&](JsonWriter& w) {
    Put(w, "nextSequenceToken", SequenceToken(stream.sequence));
    if (too_new_start || too_old_end || expired_end) {
      w.Key("rejectedLogEventsInfo");
      w.StartObject();
      if (too_new_start) {
        PutInt(w, "tooNewLogEventStartIndex",
               static_cast<int64_t>(*too_new_start));
      }
      if (too_old_end) {
        PutInt(w, "tooOldLogEventEndIndex", static_cast<int64_t>(*too_old_end));
      }
      if (expired_end) {
        PutInt(w, "expiredLogEventEndIndex",
               static_cast<int64_t>(*expired_end));
      }
      w.EndObject();
    }
  });
}

Reply GetLogEvents(Fake& fake, const rapidjson::Document& body,
                   const std::string&) ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake.mu) {
  LogGroupState* group = nullptr;
  if (std::optional<Reply> bad = FindGroup(fake, body, &group)) return *bad;
  auto s = group->streams.find(Str(body, "logStreamName"));
  if (s == group->streams.end()) return StreamNotFound();
  const int64_t start_time =
      Int(body, "startTime").value_or(std::numeric_limits<int64_t>::min());
  const int64_t end_time =
      Int(body, "endTime").value_or(std::numeric_limits<int64_t>::max());
  std::vector<const StoredLogEvent*> events;
  for (const StoredLogEvent& e : s->second.events) {
    if (e.timestamp >= start_time && e.timestamp < end_time) {
      events.push_back(&e);
    }
  }
  const size_t n = events.size();
  const size_t limit = static_cast<size_t>(Int(body, "limit").value_or(10000));
  bool forward = Bool(body, "startFromHead", false);
  size_t position = forward ? 0 : n;
  if (const std::string token = Str(body, "nextToken"); !token.empty()) {
    std::optional<std::pair<char, size_t>> parsed = ParseEventToken(token);
    if (!parsed || parsed->second > n) {
      return InvalidParameter("The specified nextToken is invalid.");
    }
    forward = parsed->first == 'f';
    position = parsed->second;
  }
  // At most `limit` events and 1 MB of them.
  size_t begin = position;
  size_t end = position;
  int64_t bytes = 0;
  auto fits = [&](const StoredLogEvent* e) {
    const int64_t more =
        static_cast<int64_t>(e->message.size()) + kEventOverhead;
    if (end - begin >= limit || bytes + more > kMaxBatchBytes) return false;
    bytes += more;
    return true;
  };
  if (forward) {
    while (end < n && fits(events[end])) ++end;
  } else {
    while (begin > 0 && fits(events[begin - 1])) --begin;
  }
  return Ok([&](JsonWriter& w) {
    w.Key("events");
    w.StartArray();
    for (size_t i = begin; i < end; ++i) {
      w.StartObject();
      PutInt(w, "timestamp", events[i]->timestamp);
      Put(w, "message", events[i]->message);
      PutInt(w, "ingestionTime", events[i]->ingestion);
      w.EndObject();
    }
    w.EndArray();
    Put(w, "nextForwardToken", EventToken('f', end));
    Put(w, "nextBackwardToken", EventToken('b', begin));
  });
}

}  // namespace

Operation LogsOperation(std::string_view name) {
  static const auto* kOperations = new std::map<std::string_view, Operation>{
      {"CreateLogGroup", &CreateLogGroup},
      {"DeleteLogGroup", &DeleteLogGroup},
      {"DescribeLogGroups", &DescribeLogGroups},
      {"PutRetentionPolicy", &PutRetentionPolicy},
      {"DeleteRetentionPolicy", &DeleteRetentionPolicy},
      {"CreateLogStream", &CreateLogStream},
      {"DeleteLogStream", &DeleteLogStream},
      {"DescribeLogStreams", &DescribeLogStreams},
      {"PutLogEvents", &PutLogEvents},
      {"GetLogEvents", &GetLogEvents},
  };
  auto it = kOperations->find(name);
  return it == kOperations->end() ? nullptr : it->second;
}

void Fake::AppendLogEvent(const std::string& group, const std::string& stream,
                          int64_t timestamp_ms, std::string message) {
  auto g = log_groups.find(group);
  if (g == log_groups.end()) return;
  auto s = g->second.streams.find(stream);
  if (s == g->second.streams.end()) return;
  s->second.events.push_back({timestamp_ms, NowMs(), std::move(message)});
}

}  // namespace delegate::testing::aws_fake
