#include "delegate/metrics.h"

#include <string>
#include <vector>

#include "delegate/event_log.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace delegate {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, CountersAndGaugesRenderInPrometheusText) {
  Metrics m;
  m.Define("io_harness_task_completed_total", Metrics::Kind::kCounter,
           "Tasks answered OK.", {"account_id", "task_type"});
  m.Define("io_harness_tasks_currently_executing", Metrics::Kind::kGauge,
           "Tasks being run now.", {"task_type"});
  m.Add("io_harness_task_completed_total", {"acct", "local_init"});
  m.Add("io_harness_task_completed_total", {"acct", "local_init"});
  m.Add("io_harness_tasks_currently_executing", {"local_execute"}, 3);
  m.Add("io_harness_tasks_currently_executing", {"local_execute"}, -1);
  const std::string text = m.RenderPrometheus();
  EXPECT_THAT(text,
              HasSubstr("# TYPE io_harness_task_completed_total counter\n"));
  EXPECT_THAT(text, HasSubstr("io_harness_task_completed_total{account_id="
                              "\"acct\",task_type=\"local_init\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("io_harness_tasks_currently_executing{task_type="
                              "\"local_execute\"} 2\n"));
  EXPECT_EQ(m.Value("io_harness_task_completed_total", {"acct", "local_init"}),
            2);
}

TEST(MetricsTest, HistogramBucketsAreCumulative) {
  Metrics m;
  m.Define("t", Metrics::Kind::kHistogram, "h", {}, {0.1, 1});
  m.Observe("t", {}, 0.05);
  m.Observe("t", {}, 0.5);
  m.Observe("t", {}, 5);
  const std::string text = m.RenderPrometheus();
  EXPECT_THAT(text, HasSubstr("t_bucket{le=\"0.1\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("t_bucket{le=\"1\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("t_bucket{le=\"+Inf\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("t_count 3\n"));
  EXPECT_THAT(text, HasSubstr("t_sum 5.55\n"));
}

TEST(MetricsTest, LabelValuesAreEscapedAndMisuseIsIgnored) {
  Metrics m;
  m.Define("c", Metrics::Kind::kCounter, "c", {"name"});
  m.Add("c", {"a\"b\\c\nd"});
  m.Add("c", {"too", "many"});  // wrong arity: ignored
  m.Set("c", {"x"}, 5);         // a counter is not set: ignored
  m.Add("undefined", {});
  const std::string text = m.RenderPrometheus();
  EXPECT_THAT(text, HasSubstr("c{name=\"a\\\"b\\\\c\\nd\"} 1\n"));
  EXPECT_EQ(m.Value("c", {"x"}), 0);
}

TEST(EventLogTest, OneJsonObjectPerLineWithEscapedFields) {
  std::vector<std::string> lines;
  EventLog log([&](std::string_view l) { lines.emplace_back(l); });
  log.Info("connected",
           {{"delegate_id", "d-1"}, {"note", "a \"quote\"\nand a newline"}});
  log.Error("bad\xff byte");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_THAT(
      lines[0],
      HasSubstr(
          "\"level\":\"info\",\"msg\":\"connected\",\"delegate_id\":\"d-1\""));
  EXPECT_THAT(lines[0],
              HasSubstr("\"note\":\"a \\\"quote\\\"\\nand a newline\""));
  EXPECT_EQ(lines[0].find('\n'), std::string::npos);
  EXPECT_THAT(lines[1], HasSubstr("\"msg\":\"bad\xef\xbf\xbd byte\""));
  EXPECT_EQ(lines[0].rfind("{\"time\":\"", 0), 0u);
}

}  // namespace
}  // namespace delegate
