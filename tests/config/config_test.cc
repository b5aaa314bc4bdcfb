#include "delegate/config.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

// Distinctive, so that a search of any output for it cannot match by chance.
constexpr char kToken[] = "tok-Zq81xWv0-SECRET-do-not-print-4f3e";

EnvMap ServerEnv() {
  return {{"HARNESS_ACCOUNT_ID", "acc123"},
          {"HARNESS_TOKEN", kToken},
          {"HARNESS_URL", "https://app.harness.io"}};
}

DelegateConfig LoadOk(const EnvMap& process, const EnvMap& file = {},
                      ConfigNeed need = ConfigNeed::kLocal) {
  absl::StatusOr<DelegateConfig> cfg = LoadConfig(process, file, need);
  EXPECT_TRUE(cfg.ok()) << cfg.status();
  return cfg.ok() ? *std::move(cfg) : DelegateConfig{};
}

// The error message of a load that must fail with InvalidArgument on one
// line.
std::string LoadError(const EnvMap& process, const EnvMap& file = {},
                      ConfigNeed need = ConfigNeed::kLocal) {
  absl::StatusOr<DelegateConfig> cfg = LoadConfig(process, file, need);
  EXPECT_FALSE(cfg.ok());
  if (cfg.ok()) return "";
  EXPECT_EQ(cfg.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(cfg.status().message());
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  return msg;
}

std::string WriteTempFile(const std::string& name, const std::string& text) {
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/config_test_", getpid(), "_", name);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  return path;
}

// --- Defaults -------------------------------------------------------------

TEST(LoadConfigTest, DefaultsWhenNothingIsSet) {
  DelegateConfig cfg = LoadOk({});
  EXPECT_EQ(cfg.account_id, "");
  EXPECT_TRUE(cfg.token.empty());
  EXPECT_EQ(cfg.manager_url, "");
  EXPECT_EQ(cfg.name, "harness-delegate");
  EXPECT_THAT(cfg.tags, IsEmpty());
  EXPECT_FALSE(cfg.max_stages.has_value());
  EXPECT_EQ(cfg.parallel_workers, 100);
  EXPECT_EQ(cfg.poll_interval, absl::Seconds(3));
  EXPECT_EQ(cfg.cleanup_grace_period, absl::Seconds(10));
  EXPECT_EQ(cfg.workdir, "");
  EXPECT_THAT(cfg.warnings, IsEmpty());
  for (const char* setting :
       {"account_id", "token", "manager_url", "name", "tags", "max_stages",
        "parallel_workers", "poll_interval", "cleanup_grace_period",
        "workdir"}) {
    EXPECT_EQ(cfg.sources[setting], "default") << setting;
  }
}

TEST(LoadConfigTest, LocalModeRequiresNothing) {
  EXPECT_TRUE(LoadConfig({}, {}, ConfigNeed::kLocal).ok());
}

TEST(LoadConfigTest, UnrelatedVariablesAreIgnored) {
  DelegateConfig cfg = LoadOk({{"HOME", "/root"}, {"PATH", "/bin"}});
  EXPECT_EQ(cfg.name, "harness-delegate");
  EXPECT_THAT(cfg.warnings, IsEmpty());
}

// --- Aliases and precedence -----------------------------------------------

struct AliasGroup {
  std::string setting;
  std::vector<std::string> names;  // precedence order
};

std::vector<AliasGroup> AliasGroups() {
  return {
      {"account_id", {"HARNESS_ACCOUNT_ID", "ACCOUNT_ID"}},
      {"token",
       {"HARNESS_TOKEN", "TOKEN", "DELEGATE_TOKEN", "HARNESS_DELEGATE_TOKEN"}},
      {"manager_url", {"HARNESS_URL", "URL", "MANAGER_HOST_AND_PORT"}},
      {"name", {"HARNESS_NAME", "NAME", "DELEGATE_NAME"}},
      {"tags", {"HARNESS_TAGS", "TAGS", "DELEGATE_TAGS"}},
  };
}

// A valid, distinct value for alias number `i` of `setting`.
std::string ValueFor(const std::string& setting, int i) {
  if (setting == "manager_url") return absl::StrCat("https://m", i, ".example");
  return absl::StrCat(setting, "-v", i);
}

std::string Setting(const DelegateConfig& cfg, const std::string& setting) {
  if (setting == "account_id") return cfg.account_id;
  if (setting == "token") return cfg.token.reveal();
  if (setting == "manager_url") return cfg.manager_url;
  if (setting == "name") return cfg.name;
  if (setting == "tags") {
    return cfg.tags.size() == 1 ? cfg.tags[0] : "<not one tag>";
  }
  return "<unknown setting>";
}

TEST(LoadConfigTest, EachAliasSetsItsSetting) {
  for (const AliasGroup& group : AliasGroups()) {
    for (size_t i = 0; i < group.names.size(); ++i) {
      SCOPED_TRACE(group.names[i]);
      const std::string value = ValueFor(group.setting, static_cast<int>(i));
      DelegateConfig cfg = LoadOk({{group.names[i], value}});
      EXPECT_EQ(Setting(cfg, group.setting), value);
      EXPECT_EQ(cfg.sources[group.setting], group.names[i]);
      EXPECT_THAT(cfg.warnings, IsEmpty());
    }
  }
}

TEST(LoadConfigTest, FirstSetAliasWinsInDocumentedOrder) {
  for (const AliasGroup& group : AliasGroups()) {
    // Drop aliases from the front one at a time: the next one must win.
    for (size_t first = 0; first < group.names.size(); ++first) {
      SCOPED_TRACE(absl::StrCat(group.setting, " from ", group.names[first]));
      EnvMap env;
      for (size_t i = first; i < group.names.size(); ++i) {
        env[group.names[i]] = ValueFor(group.setting, static_cast<int>(i));
      }
      DelegateConfig cfg = LoadOk(env);
      EXPECT_EQ(Setting(cfg, group.setting),
                ValueFor(group.setting, static_cast<int>(first)));
      EXPECT_EQ(cfg.sources[group.setting], group.names[first]);
      // One warning per losing alias, naming both and the winner.
      EXPECT_EQ(cfg.warnings.size(), group.names.size() - first - 1);
      for (size_t i = first + 1; i < group.names.size(); ++i) {
        EXPECT_THAT(
            cfg.warnings,
            testing::Contains(absl::StrCat(
                group.names[first], " and ", group.names[i],
                " are both set and differ; using ", group.names[first])));
      }
    }
  }
}

TEST(LoadConfigTest, DifferingAliasWarningExactText) {
  DelegateConfig cfg =
      LoadOk({{"HARNESS_NAME", "alpha"}, {"DELEGATE_NAME", "beta"}});
  EXPECT_EQ(cfg.name, "alpha");
  EXPECT_THAT(cfg.warnings,
              ElementsAre("HARNESS_NAME and DELEGATE_NAME are both set and "
                          "differ; using HARNESS_NAME"));
  // Values are not printed in warnings.
  EXPECT_THAT(cfg.warnings[0], Not(HasSubstr("alpha")));
  EXPECT_THAT(cfg.warnings[0], Not(HasSubstr("beta")));
}

TEST(LoadConfigTest, AliasesWithEqualValuesDoNotWarn) {
  DelegateConfig cfg = LoadOk({{"HARNESS_NAME", "same"},
                               {"NAME", " same "},
                               {"HARNESS_URL", "https://a.io/"},
                               {"URL", "https://a.io"},
                               {"HARNESS_TAGS", "a,b"},
                               {"TAGS", " a , b ,a"}});
  EXPECT_THAT(cfg.warnings, IsEmpty());
}

TEST(LoadConfigTest, BlankAliasCountsAsUnset) {
  DelegateConfig cfg = LoadOk(
      {{"HARNESS_NAME", "   "}, {"NAME", ""}, {"DELEGATE_NAME", "third"}});
  EXPECT_EQ(cfg.name, "third");
  EXPECT_EQ(cfg.sources["name"], "DELEGATE_NAME");
  EXPECT_THAT(cfg.warnings, IsEmpty());
}

TEST(LoadConfigTest, ValuesAreTrimmed) {
  DelegateConfig cfg = LoadOk({{"HARNESS_NAME", "  n1\t"},
                               {"HARNESS_ACCOUNT_ID", " acc "},
                               {"MAX_STAGES", " 7 "},
                               {"HARNESS_WORKDIR", " /var/work "}});
  EXPECT_EQ(cfg.name, "n1");
  EXPECT_EQ(cfg.account_id, "acc");
  EXPECT_EQ(cfg.max_stages, 7);
  EXPECT_EQ(cfg.workdir, "/var/work");
}

// --- Process environment versus env file ----------------------------------

TEST(LoadConfigTest, ProcessOverridesFileForTheSameName) {
  DelegateConfig cfg =
      LoadOk({{"HARNESS_NAME", "from-process"}},
             {{"HARNESS_NAME", "from-file"}, {"HARNESS_TAGS", "file-tag"}});
  EXPECT_EQ(cfg.name, "from-process");
  EXPECT_EQ(cfg.sources["name"], "HARNESS_NAME");
  EXPECT_THAT(cfg.tags, ElementsAre("file-tag"));
  EXPECT_THAT(cfg.warnings, IsEmpty());
}

TEST(LoadConfigTest, FileValuesApplyWhenProcessLacksThem) {
  DelegateConfig cfg =
      LoadOk({}, {{"MAX_STAGES", "4"}, {"POLL_INTERVAL_MILLISECS", "500"}});
  EXPECT_EQ(cfg.max_stages, 4);
  EXPECT_EQ(cfg.poll_interval, absl::Milliseconds(500));
  EXPECT_EQ(cfg.sources["max_stages"], "MAX_STAGES");
}

TEST(LoadConfigTest, AliasOrderStillAppliesAcrossFileAndProcess) {
  // The merge is per name; the alias order then decides.
  DelegateConfig cfg =
      LoadOk({{"DELEGATE_NAME", "process"}}, {{"HARNESS_NAME", "file"}});
  EXPECT_EQ(cfg.name, "file");
  EXPECT_EQ(cfg.sources["name"], "HARNESS_NAME");
  EXPECT_EQ(cfg.warnings.size(), 1u);
}

TEST(LoadConfigTest, BlankProcessValueOverridesFileAndWarns) {
  DelegateConfig cfg =
      LoadOk({{"HARNESS_TAGS", ""}}, {{"HARNESS_TAGS", "linux,gpu"}});
  EXPECT_THAT(cfg.tags, IsEmpty());
  EXPECT_EQ(cfg.sources["tags"], "default");
  ASSERT_EQ(cfg.warnings.size(), 1u);
  EXPECT_THAT(cfg.warnings[0], HasSubstr("HARNESS_TAGS"));
  EXPECT_THAT(cfg.warnings[0], Not(HasSubstr("linux")));
}

// --- Tags -----------------------------------------------------------------

TEST(LoadConfigTest, TagsAreTrimmedEmptiesDroppedDuplicatesDropped) {
  DelegateConfig cfg = LoadOk({{"HARNESS_TAGS", " b , a,,b , c ,, a,"}});
  EXPECT_THAT(cfg.tags, ElementsAre("b", "a", "c"));
}

TEST(LoadConfigTest, TagsOfOnlyCommasGiveNoTags) {
  DelegateConfig cfg = LoadOk({{"DELEGATE_TAGS", " , ,"}});
  EXPECT_THAT(cfg.tags, IsEmpty());
  EXPECT_EQ(cfg.sources["tags"], "DELEGATE_TAGS");
}

// --- Numbers and strings --------------------------------------------------

TEST(LoadConfigTest, NumericSettingsParse) {
  DelegateConfig cfg = LoadOk({{"MAX_STAGES", "1000000"},
                               {"PARALLEL_WORKERS", "8"},
                               {"POLL_INTERVAL_MILLISECS", "250"},
                               {"CLEANUP_GRACE_PERIOD_SECONDS", "0"},
                               {"DELEGATE_LOG_SPOOL_MIB", "64"},
                               {"HARNESS_WORKDIR", "/data/work"}});
  EXPECT_EQ(cfg.log_spool_mib, 64);
  EXPECT_EQ(cfg.sources["log_spool_mib"], "DELEGATE_LOG_SPOOL_MIB");
  EXPECT_EQ(LoadOk({}).log_spool_mib, 1024);
  EXPECT_EQ(cfg.max_stages, 1000000);
  EXPECT_EQ(cfg.parallel_workers, 8);
  EXPECT_EQ(cfg.poll_interval, absl::Milliseconds(250));
  EXPECT_EQ(cfg.cleanup_grace_period, absl::ZeroDuration());
  EXPECT_EQ(cfg.workdir, "/data/work");
  EXPECT_EQ(cfg.sources["max_stages"], "MAX_STAGES");
  EXPECT_EQ(cfg.sources["parallel_workers"], "PARALLEL_WORKERS");
  EXPECT_EQ(cfg.sources["poll_interval"], "POLL_INTERVAL_MILLISECS");
  EXPECT_EQ(cfg.sources["cleanup_grace_period"],
            "CLEANUP_GRACE_PERIOD_SECONDS");
  EXPECT_EQ(cfg.sources["workdir"], "HARNESS_WORKDIR");
  EXPECT_EQ(LoadOk({{"MAX_STAGES", "1"}}).max_stages, 1);
}

TEST(LoadConfigTest, MaxStagesNotANumberMessage) {
  EXPECT_EQ(LoadError({{"MAX_STAGES", "ten"}}),
            "MAX_STAGES: expected a positive integer, got 'ten'");
}

TEST(LoadConfigTest, MalformedNumbersNameTheVariable) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"MAX_STAGES", "0"},
      {"MAX_STAGES", "-1"},
      {"MAX_STAGES", "+5"},
      {"MAX_STAGES", "1000001"},
      {"MAX_STAGES", "99999999999999999999"},
      {"MAX_STAGES", "1.5"},
      {"MAX_STAGES", "5 stages"},
      {"PARALLEL_WORKERS", "0"},
      {"PARALLEL_WORKERS", "many"},
      {"PARALLEL_WORKERS", "3000000000"},
      {"POLL_INTERVAL_MILLISECS", "0"},
      {"POLL_INTERVAL_MILLISECS", "3s"},
      {"POLL_INTERVAL_MILLISECS", "-100"},
      {"CLEANUP_GRACE_PERIOD_SECONDS", "-1"},
      {"CLEANUP_GRACE_PERIOD_SECONDS", "10s"},
      {"CLEANUP_GRACE_PERIOD_SECONDS", "soon"},
      {"DELEGATE_LOG_SPOOL_MIB", "0"},
      {"DELEGATE_LOG_SPOOL_MIB", "1GiB"},
      {"DELEGATE_LOG_SPOOL_MIB", "9999999"},
  };
  for (const auto& [var, value] : cases) {
    SCOPED_TRACE(absl::StrCat(var, "=", value));
    const std::string msg = LoadError({{var, value}});
    EXPECT_THAT(msg, testing::StartsWith(absl::StrCat(var, ": expected ")));
    EXPECT_THAT(msg, HasSubstr(absl::StrCat("got '", value, "'")));
  }
}

TEST(LoadConfigTest, MaxStagesAboveLimitSaysTheLimit) {
  EXPECT_EQ(LoadError({{"MAX_STAGES", "1000001"}}),
            "MAX_STAGES: expected a positive integer up to 1000000, got "
            "'1000001'");
}

TEST(LoadConfigTest, AccountIdWithWhitespaceIsRejected) {
  EXPECT_EQ(LoadError({{"ACCOUNT_ID", "abc def"}}),
            "ACCOUNT_ID: expected an account id without whitespace, got "
            "'abc def'");
}

TEST(LoadConfigTest, EchoedValuesStayOnOneLine) {
  const std::string msg = LoadError({{"MAX_STAGES", "1\n2"}});
  EXPECT_THAT(msg, HasSubstr("got '1\\n2'"));
}

// --- URL ------------------------------------------------------------------

TEST(LoadConfigTest, UrlWithoutSchemeNamesTheSupplyingVariable) {
  EXPECT_EQ(LoadError({{"HARNESS_URL", "app.harness.io"}}),
            "HARNESS_URL: expected a URL like https://app.harness.io, got "
            "'app.harness.io'");
  EXPECT_EQ(LoadError({{"MANAGER_HOST_AND_PORT", "app.harness.io:443"}}),
            "MANAGER_HOST_AND_PORT: expected a URL like "
            "https://app.harness.io, got 'app.harness.io:443'");
}

TEST(LoadConfigTest, MalformedUrlsAreRejected) {
  for (const char* url :
       {"ftp://app.harness.io", "https://", "https:///", "http://:8080",
        "https://host:port", "https://host:0", "https://host:70000",
        "https://ho st", "https://[::1", "https://user@", "//app.harness.io"}) {
    SCOPED_TRACE(url);
    EXPECT_THAT(LoadError({{"URL", url}}),
                testing::StartsWith("URL: expected a URL like "
                                    "https://app.harness.io, got '"));
  }
}

TEST(LoadConfigTest, ValidUrlsAreKeptWithTrailingSlashDropped) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"https://app.harness.io/", "https://app.harness.io"},
      {"https://app.harness.io", "https://app.harness.io"},
      {"http://10.0.0.5:7143", "http://10.0.0.5:7143"},
      {"https://app.harness.io/gratis/", "https://app.harness.io/gratis"},
      {"HTTPS://App.Harness.io", "HTTPS://App.Harness.io"},
      {"http://[::1]:8080/", "http://[::1]:8080"},
  };
  for (const auto& [in, out] : cases) {
    SCOPED_TRACE(in);
    EXPECT_EQ(LoadOk({{"HARNESS_URL", in}}).manager_url, out);
  }
}

// --- Server mode ----------------------------------------------------------

TEST(LoadConfigTest, ServerModeWithEverythingSet) {
  DelegateConfig cfg = LoadOk(ServerEnv(), {}, ConfigNeed::kServer);
  EXPECT_EQ(cfg.account_id, "acc123");
  EXPECT_EQ(cfg.token.reveal(), kToken);
  EXPECT_EQ(cfg.manager_url, "https://app.harness.io");
}

TEST(LoadConfigTest, ServerModeMissingTokenNamesAllAliases) {
  EnvMap env = ServerEnv();
  env.erase("HARNESS_TOKEN");
  EXPECT_EQ(LoadError(env, {}, ConfigNeed::kServer),
            "HARNESS_TOKEN is not set: set it (or TOKEN, DELEGATE_TOKEN, "
            "HARNESS_DELEGATE_TOKEN) to the delegate token from Harness");
}

TEST(LoadConfigTest, ServerModeMissingAccountId) {
  EnvMap env = ServerEnv();
  env.erase("HARNESS_ACCOUNT_ID");
  EXPECT_EQ(LoadError(env, {}, ConfigNeed::kServer),
            "HARNESS_ACCOUNT_ID is not set: set it (or ACCOUNT_ID) to the "
            "account id from Harness");
}

TEST(LoadConfigTest, ServerModeMissingUrl) {
  EnvMap env = ServerEnv();
  env.erase("HARNESS_URL");
  EXPECT_EQ(LoadError(env, {}, ConfigNeed::kServer),
            "HARNESS_URL is not set: set it (or URL, MANAGER_HOST_AND_PORT) "
            "to the Harness manager URL, like https://app.harness.io");
}

TEST(LoadConfigTest, ServerModeBlankCountsAsMissing) {
  EnvMap env = ServerEnv();
  env["HARNESS_TOKEN"] = "  ";
  EXPECT_THAT(LoadError(env, {}, ConfigNeed::kServer),
              testing::StartsWith("HARNESS_TOKEN is not set"));
}

TEST(LoadConfigTest, ServerModeReportsOnlyTheFirstProblem) {
  EXPECT_THAT(LoadError({}, {}, ConfigNeed::kServer),
              testing::StartsWith("HARNESS_ACCOUNT_ID is not set"));
}

TEST(LoadConfigTest, ServerModeAcceptsAliasesAndFileValues) {
  DelegateConfig cfg = LoadOk(
      {{"DELEGATE_TOKEN", kToken}},
      {{"ACCOUNT_ID", "acc9"}, {"MANAGER_HOST_AND_PORT", "https://m.io/"}},
      ConfigNeed::kServer);
  EXPECT_EQ(cfg.account_id, "acc9");
  EXPECT_EQ(cfg.manager_url, "https://m.io");
  EXPECT_EQ(cfg.sources["token"], "DELEGATE_TOKEN");
}

// --- Dump -----------------------------------------------------------------

TEST(DumpTest, ShowsEachSettingWithSource) {
  EnvMap env = ServerEnv();
  env["HARNESS_TAGS"] = "a, b";
  env["POLL_INTERVAL_MILLISECS"] = "1500";
  DelegateConfig cfg = LoadOk(env, {}, ConfigNeed::kServer);
  const std::string dump = cfg.Dump();
  EXPECT_THAT(dump, HasSubstr("account_id = acc123 (HARNESS_ACCOUNT_ID)\n"));
  EXPECT_THAT(dump, HasSubstr("token = <set> (HARNESS_TOKEN)\n"));
  EXPECT_THAT(dump,
              HasSubstr("manager_url = https://app.harness.io (HARNESS_URL)"));
  EXPECT_THAT(dump, HasSubstr("name = harness-delegate (default)\n"));
  EXPECT_THAT(dump, HasSubstr("tags = a,b (HARNESS_TAGS)\n"));
  EXPECT_THAT(dump, HasSubstr("max_stages = unbounded (default)\n"));
  EXPECT_THAT(dump, HasSubstr("parallel_workers = 100 (default)\n"));
  EXPECT_THAT(dump,
              HasSubstr("poll_interval = 1.5s (POLL_INTERVAL_MILLISECS)\n"));
  EXPECT_THAT(dump, HasSubstr("cleanup_grace_period = 10s (default)\n"));
  EXPECT_THAT(dump, HasSubstr("workdir = "));
  EXPECT_THAT(dump, HasSubstr("/harness-delegate (default)\n"));
  EXPECT_THAT(dump, HasSubstr("state_dir = "));
  EXPECT_THAT(dump, HasSubstr("ops_bind = :3000 (default)\n"));
  EXPECT_THAT(dump, HasSubstr("proxy = <unset> (default)\n"));
  // One line per setting.
  EXPECT_EQ(std::count(dump.begin(), dump.end(), '\n'), 21);
  EXPECT_THAT(dump, HasSubstr("log_spool_mib = 1024 (default)\n"));
}

TEST(DumpTest, TheStateDirectoryIsMadeAbsoluteAndShown) {
  EnvMap env = ServerEnv();
  env["DELEGATE_STATE_DIR"] = "state";
  DelegateConfig cfg = LoadOk(env, {}, ConfigNeed::kServer);
  EXPECT_EQ(cfg.StateDir(),
            std::filesystem::current_path().string() + "/state");
  EXPECT_THAT(cfg.Dump(), HasSubstr("state_dir = " + cfg.StateDir() +
                                    " (DELEGATE_STATE_DIR)\n"));
}

TEST(DumpTest, PasswordInTheManagerUrlIsStarred) {
  EnvMap env = ServerEnv();
  env["HARNESS_URL"] = "http://user:pw-Zq81@manager.local:8080/";
  DelegateConfig cfg = LoadOk(env, {}, ConfigNeed::kServer);
  EXPECT_EQ(cfg.manager_url, "http://user:pw-Zq81@manager.local:8080");
  EXPECT_THAT(cfg.Dump(),
              HasSubstr("manager_url = http://user:***@manager.local:8080 "
                        "(HARNESS_URL)\n"));
  EXPECT_THAT(cfg.Dump(), Not(HasSubstr("pw-Zq81")));
  env["HARNESS_URL"] = "ftp://user:pw-Zq81@manager.local";
  std::string error = LoadError(env, {}, ConfigNeed::kServer);
  EXPECT_THAT(error, HasSubstr("ftp://user:***@manager.local"));
  EXPECT_THAT(error, Not(HasSubstr("pw-Zq81")));
}

TEST(ServerSettingsTest, ProxyFromTheProxyKeysKeepsThePasswordSecret) {
  EnvMap env = ServerEnv();
  env["PROXY_HOST"] = "proxy.corp";
  env["PROXY_PORT"] = "3128";
  env["PROXY_USER"] = "bob";
  env["PROXY_PASSWORD"] = "p@ss word";
  env["HTTPS_PROXY"] = "http://other:1";
  env["NO_PROXY"] = "localhost,.corp";
  DelegateConfig cfg = LoadOk(env, {}, ConfigNeed::kServer);
  EXPECT_EQ(cfg.proxy.reveal(), "http://bob:p%40ss%20word@proxy.corp:3128");
  EXPECT_EQ(cfg.no_proxy, "localhost,.corp");
  EXPECT_THAT(cfg.Dump(), HasSubstr("proxy = <set> (PROXY_HOST)"));
  EXPECT_THAT(cfg.Dump(), Not(HasSubstr("p@ss")));
}

TEST(ServerSettingsTest, ConventionalProxyVariablesApplyWithoutProxyHost) {
  EnvMap env = ServerEnv();
  env["https_proxy"] = "http://squid:3128";
  DelegateConfig cfg = LoadOk(env, {}, ConfigNeed::kServer);
  EXPECT_EQ(cfg.proxy.reveal(), "http://squid:3128");
}

TEST(ServerSettingsTest, BadServerSettingsNameTheVariable) {
  for (auto [var, value, expect] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"HTTPS_BIND", "3000", "HTTPS_BIND: expected [HOST]:PORT"},
           {"HTTPS_BIND", ":99999", "HTTPS_BIND: expected [HOST]:PORT"},
           {"IDLE_WAIT_SECS_BEFORE_STOP", "-1", "IDLE_WAIT_SECS_BEFORE_STOP"},
           {"PROXY_SCHEME", "ftp", "PROXY_SCHEME: expected http"},
           {"DELEGATE_MANAGER_TIMEOUT_SECS", "0",
            "DELEGATE_MANAGER_TIMEOUT_SECS"},
           {"HARNESS_CLIENT_CERT_FILE", "/x.pem",
            "needs both HARNESS_CLIENT_CERT_FILE"}}) {
    EnvMap env = ServerEnv();
    env[var] = value;
    if (var == "PROXY_SCHEME") env["PROXY_HOST"] = "p";
    absl::StatusOr<DelegateConfig> cfg =
        LoadConfig(env, {}, ConfigNeed::kServer);
    ASSERT_FALSE(cfg.ok()) << var;
    EXPECT_THAT(cfg.status().message(), HasSubstr(expect)) << var;
  }
}

TEST(ServerSettingsTest, IdleWaitAndOpsBindAreRead) {
  EnvMap env = ServerEnv();
  env["IDLE_WAIT_SECS_BEFORE_STOP"] = "60";
  env["HTTPS_BIND"] = "127.0.0.1:3001";
  DelegateConfig cfg = LoadOk(env, {}, ConfigNeed::kServer);
  EXPECT_EQ(cfg.idle_wait_before_stop, absl::Seconds(60));
  EXPECT_EQ(cfg.ops_bind, "127.0.0.1:3001");
}

TEST(DumpTest, UnsetTokenAndMaxStages) {
  DelegateConfig cfg = LoadOk({{"MAX_STAGES", "3"}});
  const std::string dump = cfg.Dump();
  EXPECT_THAT(dump, HasSubstr("token = <unset>"));
  EXPECT_THAT(dump, HasSubstr("max_stages = 3 (MAX_STAGES)"));
  EXPECT_THAT(dump, HasSubstr("cleanup_grace_period = 10s"));
  EXPECT_THAT(dump, HasSubstr("poll_interval = 3s"));
}

TEST(DumpTest, ZeroGracePeriodIsReadable) {
  DelegateConfig cfg = LoadOk({{"CLEANUP_GRACE_PERIOD_SECONDS", "0"}});
  EXPECT_THAT(cfg.Dump(), HasSubstr("cleanup_grace_period = 0s"));
}

TEST(DumpTest, HandBuiltConfigDumps) {
  DelegateConfig cfg;
  cfg.token = SecretString(kToken);
  const std::string dump = cfg.Dump();
  EXPECT_THAT(dump, HasSubstr("token = <set>\n"));
  EXPECT_THAT(dump, Not(HasSubstr(kToken)));
}

// --- The token never shows ------------------------------------------------

TEST(TokenSecrecyTest, TokenAppearsInNoErrorWarningOrDump) {
  std::vector<std::string> outputs;
  const std::string other_token = "tok-OTHER-alias-value-77aa";

  // Warnings from differing token aliases, and the dump.
  EnvMap env = ServerEnv();
  env["TOKEN"] = other_token;
  env["DELEGATE_TOKEN"] = absl::StrCat(kToken, "x");
  // A user pasting the token into other fields.
  env["HARNESS_NAME"] = kToken;
  env["HARNESS_TAGS"] = absl::StrCat("a,", kToken);
  env["HARNESS_WORKDIR"] = absl::StrCat("/w/", kToken);
  DelegateConfig cfg = LoadOk(env, {}, ConfigNeed::kServer);
  EXPECT_EQ(cfg.warnings.size(), 2u);
  for (const std::string& w : cfg.warnings) outputs.push_back(w);
  outputs.push_back(cfg.Dump());

  // Errors, including ones that echo a value holding the token.
  EnvMap base = ServerEnv();
  auto error_with = [&](const std::string& var, const std::string& value) {
    EnvMap e = base;
    e[var] = value;
    outputs.push_back(LoadError(e, {}, ConfigNeed::kServer));
  };
  error_with("MAX_STAGES", kToken);
  error_with("PARALLEL_WORKERS", kToken);
  error_with("POLL_INTERVAL_MILLISECS", kToken);
  error_with("CLEANUP_GRACE_PERIOD_SECONDS", kToken);
  error_with("HARNESS_URL", kToken);
  error_with("HARNESS_URL", absl::StrCat("https://x.io/?t=", kToken, " y"));
  error_with("HARNESS_ACCOUNT_ID", absl::StrCat("acc ", kToken));
  {
    EnvMap e = base;
    e.erase("HARNESS_URL");
    outputs.push_back(LoadError(e, {}, ConfigNeed::kServer));
  }

  // An env file line holding the token.
  const std::string path =
      WriteTempFile("secret.env", absl::StrCat("HARNESS_TOKEN ", kToken, "\n"));
  absl::StatusOr<EnvMap> file = ReadEnvFile(path);
  ASSERT_FALSE(file.ok());
  outputs.push_back(std::string(file.status().message()));
  outputs.push_back(file.status().ToString());

  for (const std::string& out : outputs) {
    EXPECT_THAT(out, Not(HasSubstr(kToken))) << out;
    EXPECT_THAT(out, Not(HasSubstr(other_token))) << out;
  }
  std::remove(path.c_str());
}

// --- Env files ------------------------------------------------------------

EnvMap ReadOk(const std::string& name, const std::string& text) {
  const std::string path = WriteTempFile(name, text);
  absl::StatusOr<EnvMap> env = ReadEnvFile(path);
  std::remove(path.c_str());
  EXPECT_TRUE(env.ok()) << env.status();
  return env.ok() ? *std::move(env) : EnvMap{};
}

absl::Status ReadStatus(const std::string& path_out_name,
                        const std::string& text, std::string* path_out) {
  *path_out = WriteTempFile(path_out_name, text);
  absl::Status status = ReadEnvFile(*path_out).status();
  std::remove(path_out->c_str());
  return status;
}

TEST(MaskedValuesTest, EveryCredentialTheDelegateHoldsIsMasked) {
  // The token as the Harness UI shows it: base64 of 32 hex characters.
  const std::string hex = "0123456789abcdef0123456789abcdef";
  const std::string b64 = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
  DelegateConfig cfg = LoadOk({{"HARNESS_TOKEN", b64},
                               {"HARNESS_URL", "https://u:url-pw%21@h.example"},
                               {"PROXY_HOST", "proxy.local"},
                               {"PROXY_USER", "me"},
                               {"PROXY_PASSWORD", "proxy pw/1"},
                               {"AWS_SECRET_ACCESS_KEY", "aws-secret-key-1"},
                               {"AWS_SESSION_TOKEN", "aws-session-tok"}});
  std::vector<std::string> masked = cfg.MaskedValues();
  for (const std::string& v :
       {b64, hex, std::string("url-pw!"), std::string("proxy pw/1"),
        std::string("aws-secret-key-1"), std::string("aws-session-tok")}) {
    EXPECT_NE(std::find(masked.begin(), masked.end(), v), masked.end()) << v;
  }
}

TEST(MaskedValuesTest, PasswordOfAConventionalProxyUrlIsMasked) {
  DelegateConfig cfg =
      LoadOk({{"HTTPS_PROXY", "http://u:pr%2Fxy-pw@proxy:3128"}});
  EXPECT_THAT(cfg.MaskedValues(), ElementsAre("pr/xy-pw"));
  EXPECT_THAT(LoadOk({}).MaskedValues(), IsEmpty());
}

TEST(LoadConfigTest, RelativePathSettingsAreMadeAbsolute) {
  char cwd[4096];
  ASSERT_NE(getcwd(cwd, sizeof(cwd)), nullptr);
  const std::string here = cwd;
  DelegateConfig cfg = LoadOk({{"HARNESS_WORKDIR", "./work/../w"},
                               {"HARNESS_CERTS_DIR", "certs"},
                               {"HARNESS_CLIENT_CERT_FILE", "tls/c.pem"},
                               {"HARNESS_CLIENT_KEY_FILE", "/abs/k.pem"}});
  EXPECT_EQ(cfg.workdir, here + "/w");
  EXPECT_EQ(cfg.certs_dir, here + "/certs");
  EXPECT_EQ(cfg.client_cert_file, here + "/tls/c.pem");
  EXPECT_EQ(cfg.client_key_file, "/abs/k.pem");
  EXPECT_THAT(cfg.Dump(),
              HasSubstr("workdir = " + here + "/w (HARNESS_WORKDIR)"));
}

TEST(TokenFileTest, TokenIsReadFromTheFileWithTheNewlineTrimmed) {
  const std::string path = WriteTempFile("token", std::string(kToken) + "\n");
  DelegateConfig cfg = LoadOk({{"HARNESS_TOKEN_FILE", path},
                               {"HARNESS_ACCOUNT_ID", "acc123"},
                               {"HARNESS_URL", "https://app.harness.io"}},
                              {}, ConfigNeed::kServer);
  std::remove(path.c_str());
  EXPECT_EQ(cfg.token.reveal(), kToken);
  EXPECT_THAT(cfg.Dump(), HasSubstr("token = <set> (HARNESS_TOKEN_FILE)\n"));
  EXPECT_THAT(cfg.MaskedValues(), ::testing::Contains(std::string(kToken)));
}

TEST(TokenFileTest, UnreadableOrEmptyFileNamesTheVariable) {
  const std::string missing =
      absl::StrCat(::testing::TempDir(), "/config_test_no_token_file");
  std::string error = LoadError({{"HARNESS_TOKEN_FILE", missing}});
  EXPECT_THAT(error, HasSubstr("HARNESS_TOKEN_FILE"));
  EXPECT_THAT(error, HasSubstr(missing));
  EXPECT_THAT(error, HasSubstr("No such file"));
  const std::string empty = WriteTempFile("empty_token", "\n");
  error = LoadError({{"HARNESS_TOKEN_FILE", empty}});
  std::remove(empty.c_str());
  EXPECT_THAT(error, HasSubstr("HARNESS_TOKEN_FILE"));
  EXPECT_THAT(error, HasSubstr("empty"));
}

TEST(TokenFileTest, AVariableWinsOverTheFileWithAWarning) {
  DelegateConfig cfg =
      LoadOk({{"TOKEN", kToken}, {"HARNESS_TOKEN_FILE", "/nonexistent/token"}});
  EXPECT_EQ(cfg.token.reveal(), kToken);
  EXPECT_THAT(cfg.warnings,
              ElementsAre("TOKEN and HARNESS_TOKEN_FILE are both set; using "
                          "TOKEN"));
}

TEST(ScrubEnvironmentTest, TokenVariablesLeaveEnvironAndTheProcEntry) {
  ASSERT_EQ(setenv("DELEGATE_TOKEN", "scrub-me-Zq81", 1), 0);
  EXPECT_EQ(ScrubEnvironment(TokenVariables()), 1);
  EXPECT_EQ(getenv("DELEGATE_TOKEN"), nullptr);
  EXPECT_FALSE(ProcessEnvironment().contains("DELEGATE_TOKEN"));
  // The block /proc/<pid>/environ shows is checked on the binary
  // (DelegateBinaryTest.StepCannotReadTheTokenFromTheDelegatesEnviron).
}

TEST(MaxTaskPayloadTest, DefaultAndSetting) {
  EXPECT_EQ(LoadOk({}).max_task_payload_bytes, size_t{16} << 20);
  EXPECT_EQ(LoadOk({{"DELEGATE_MAX_TASK_PAYLOAD_BYTES", "1048576"}})
                .max_task_payload_bytes,
            size_t{1} << 20);
  EXPECT_THAT(LoadError({{"DELEGATE_MAX_TASK_PAYLOAD_BYTES", "12"}}),
              HasSubstr("DELEGATE_MAX_TASK_PAYLOAD_BYTES: expected a number "
                        "of bytes, 1024 or more, got '12'"));
}

TEST(ReadEnvFileTest, PlainLinesBlanksAndComments) {
  EnvMap env = ReadOk("plain.env",
                      "# a comment\n"
                      "\n"
                      "   \n"
                      "   # indented comment\n"
                      "A=1\n"
                      "  B = two  \n"
                      "C=\n"
                      "_x9=y\n");
  EXPECT_EQ(env, (EnvMap{{"A", "1"}, {"B", "two"}, {"C", ""}, {"_x9", "y"}}));
}

TEST(ReadEnvFileTest, ExportPrefixIsDropped) {
  EnvMap env = ReadOk("export.env",
                      "export A=1\n"
                      "export\tB='two'\n"
                      "exportC=3\n"
                      "export=4\n");
  EXPECT_EQ(
      env,
      (EnvMap{{"A", "1"}, {"B", "two"}, {"exportC", "3"}, {"export", "4"}}));
}

TEST(ReadEnvFileTest, QuotedValues) {
  EnvMap env = ReadOk("quotes.env",
                      "S='single # not a comment'\n"
                      "D=\"double # not a comment\"\n"
                      "E=\"a \\\"q\\\" b\\\\c\\nd\"\n"
                      "R='no \\n escapes'\n"
                      "K=\"keep \\t as is\"\n"
                      "P=\"  padded  \"\n"
                      "C=\"v\" # trailing comment\n"
                      "Q=\"\"\n"
                      "M='it\"s'\n");
  EXPECT_EQ(env["S"], "single # not a comment");
  EXPECT_EQ(env["D"], "double # not a comment");
  EXPECT_EQ(env["E"], "a \"q\" b\\c\nd");
  EXPECT_EQ(env["R"], "no \\n escapes");
  EXPECT_EQ(env["K"], "keep \\t as is");
  EXPECT_EQ(env["P"], "  padded  ");
  EXPECT_EQ(env["C"], "v");
  EXPECT_EQ(env["Q"], "");
  EXPECT_EQ(env["M"], "it\"s");
}

TEST(ReadEnvFileTest, UnquotedTrailingCommentIsDropped) {
  EnvMap env = ReadOk("comments.env",
                      "A=value # comment\n"
                      "B=value\t# comment\n"
                      "C=a#b\n"
                      "D=#hash\n"
                      "E= # only a comment\n");
  EXPECT_EQ(env["A"], "value");
  EXPECT_EQ(env["B"], "value");
  EXPECT_EQ(env["C"], "a#b");
  EXPECT_EQ(env["D"], "#hash");
  EXPECT_EQ(env["E"], "");
}

TEST(ReadEnvFileTest, CrlfLineEndingsAndLaterLineWins) {
  EnvMap env = ReadOk("crlf.env", "A=1\r\nB='2'\r\nA=3\r\n");
  EXPECT_EQ(env, (EnvMap{{"A", "3"}, {"B", "2"}}));
}

TEST(ReadEnvFileTest, ValueMayContainEquals) {
  EnvMap env = ReadOk("equals.env", "URL=https://x.io/?a=b&c=d\n");
  EXPECT_EQ(env["URL"], "https://x.io/?a=b&c=d");
}

TEST(ReadEnvFileTest, MalformedLinesGiveFileAndLineWithoutContent) {
  const std::vector<std::string> bad_lines = {
      "NO_EQUALS_SIGN_hunter2", "1ABC=hunter2",
      "KEY-X=hunter2",          "=hunter2",
      "KEY=\"hunter2",          "KEY='hunter2",
      "KEY=\"hunter2\" extra",  "export =hunter2",
      "KEY WITH SPACE=hunter2",
  };
  for (const std::string& bad : bad_lines) {
    SCOPED_TRACE(bad);
    std::string path;
    absl::Status status = ReadStatus(
        "bad.env", absl::StrCat("# header\nGOOD=1\n", bad, "\n"), &path);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(status.message(), absl::StrCat(path, ":3: expected KEY=VALUE"));
    EXPECT_THAT(status.ToString(), Not(HasSubstr("hunter2")));
  }
}

TEST(ReadEnvFileTest, MissingFileIsNotFoundNamingThePath) {
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/config_test_does_not_exist.env");
  absl::StatusOr<EnvMap> env = ReadEnvFile(path);
  ASSERT_FALSE(env.ok());
  EXPECT_EQ(env.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(env.status().message(), HasSubstr(path));
}

TEST(ReadEnvFileTest, UnreadableFileIsPermissionDenied) {
  if (geteuid() == 0) GTEST_SKIP() << "root reads any file";
  const std::string path = WriteTempFile("unreadable.env", "A=1\n");
  ASSERT_EQ(chmod(path.c_str(), 0), 0);
  absl::StatusOr<EnvMap> env = ReadEnvFile(path);
  std::remove(path.c_str());
  ASSERT_FALSE(env.ok());
  EXPECT_EQ(env.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(env.status().message(), HasSubstr(path));
}

TEST(ReadEnvFileTest, DirectoryIsAnErrorNamingThePath) {
  const std::string path = ::testing::TempDir();
  absl::StatusOr<EnvMap> env = ReadEnvFile(path);
  ASSERT_FALSE(env.ok());
  EXPECT_THAT(env.status().message(), HasSubstr(path));
}

TEST(ReadEnvFileTest, FileOverOneMebibyteIsRefused) {
  std::string big;
  while (big.size() <= (1u << 20)) big += "# filler filler filler filler\n";
  std::string path;
  absl::Status status = ReadStatus("big.env", big, &path);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr(path));
  EXPECT_THAT(status.message(), HasSubstr("1 MiB"));
}

TEST(ReadEnvFileTest, EmptyFileGivesNoVariables) {
  EXPECT_THAT(ReadOk("empty.env", ""), IsEmpty());
}

TEST(ReadEnvFileTest, FeedsLoadConfig) {
  EnvMap file =
      ReadOk("server.env", absl::StrCat("export HARNESS_ACCOUNT_ID=acc1\n",
                                        "HARNESS_TOKEN='", kToken, "'\n",
                                        "HARNESS_URL=https://m.io/ "
                                        "# manager\n"));
  DelegateConfig cfg =
      LoadOk({{"HARNESS_NAME", "d1"}}, file, ConfigNeed::kServer);
  EXPECT_EQ(cfg.account_id, "acc1");
  EXPECT_EQ(cfg.token.reveal(), kToken);
  EXPECT_EQ(cfg.manager_url, "https://m.io");
  EXPECT_EQ(cfg.name, "d1");
}

// --- Process environment --------------------------------------------------

TEST(ProcessEnvironmentTest, ReflectsEnviron) {
  ASSERT_EQ(setenv("DELEGATE_CONFIG_TEST_VAR", "a=b c", 1), 0);
  EnvMap env = ProcessEnvironment();
  unsetenv("DELEGATE_CONFIG_TEST_VAR");
  EXPECT_EQ(env["DELEGATE_CONFIG_TEST_VAR"], "a=b c");
  EXPECT_EQ(ProcessEnvironment().count("DELEGATE_CONFIG_TEST_VAR"), 0u);
}

}  // namespace
}  // namespace delegate
