/* A C11 program built with -std=c11 -pedantic -Wall -Wextra -Werror against
 * delegate/c.h: the header is plain C, and every function it declares is
 * defined by libdelegate_c.so (the program takes the address of each, so
 * it links only when all are there). `consumer --list` prints their names,
 * which c_abi.consumer_lists_every_function compares with the header. */
#include <stdio.h>
#include <string.h>

#include "delegate/c.h"

typedef void (*any_function)(void);

static const struct {
  const char* name;
  any_function address;
} kFunctions[] = {
#define FUNCTION(f) \
  { #f, (any_function)f }
    FUNCTION(delegate_free),
    FUNCTION(delegate_version),
    FUNCTION(delegate_version_major),
    FUNCTION(delegate_version_minor),
    FUNCTION(delegate_version_patch),
    FUNCTION(delegate_status_name),
    FUNCTION(delegate_env_create),
    FUNCTION(delegate_env_from_process),
    FUNCTION(delegate_env_read_file),
    FUNCTION(delegate_env_set),
    FUNCTION(delegate_env_get),
    FUNCTION(delegate_env_destroy),
    FUNCTION(delegate_config_load),
    FUNCTION(delegate_config_dump),
    FUNCTION(delegate_config_name),
    FUNCTION(delegate_config_warning_count),
    FUNCTION(delegate_config_warning),
    FUNCTION(delegate_config_destroy),
    FUNCTION(delegate_policy_load),
    FUNCTION(delegate_policy_destroy),
    FUNCTION(delegate_registry_create),
    FUNCTION(delegate_registry_destroy),
    FUNCTION(delegate_registry_register_builtins),
    FUNCTION(delegate_registry_register_executor),
    FUNCTION(delegate_stage_context_task_id),
    FUNCTION(delegate_stage_context_stage_name),
    FUNCTION(delegate_stage_context_step_count),
    FUNCTION(delegate_stage_context_set_data),
    FUNCTION(delegate_stage_context_data),
    FUNCTION(delegate_stage_context_log),
    FUNCTION(delegate_stage_context_fail),
    FUNCTION(delegate_step_context_id),
    FUNCTION(delegate_step_context_name),
    FUNCTION(delegate_step_context_image),
    FUNCTION(delegate_step_context_index),
    FUNCTION(delegate_step_context_command_count),
    FUNCTION(delegate_step_context_command),
    FUNCTION(delegate_step_context_env),
    FUNCTION(delegate_step_context_output_count),
    FUNCTION(delegate_step_context_output_name),
    FUNCTION(delegate_step_context_stage),
    FUNCTION(delegate_step_context_write),
    FUNCTION(delegate_step_context_log),
    FUNCTION(delegate_step_context_set_exit_code),
    FUNCTION(delegate_step_context_set_output),
    FUNCTION(delegate_step_context_fail),
    FUNCTION(delegate_step_context_stop_reason),
    FUNCTION(delegate_step_context_wait),
    FUNCTION(delegate_stage_parse),
    FUNCTION(delegate_stage_load_file),
    FUNCTION(delegate_stage_name),
    FUNCTION(delegate_stage_platform),
    FUNCTION(delegate_stage_step_count),
    FUNCTION(delegate_stage_destroy),
    FUNCTION(delegate_validate),
    FUNCTION(delegate_scheduler_create),
    FUNCTION(delegate_scheduler_submit),
    FUNCTION(delegate_scheduler_run),
    FUNCTION(delegate_scheduler_cancel),
    FUNCTION(delegate_scheduler_shutdown),
    FUNCTION(delegate_scheduler_destroy),
    FUNCTION(delegate_run_task_id),
    FUNCTION(delegate_run_wait),
    FUNCTION(delegate_run_interrupt),
    FUNCTION(delegate_run_destroy),
    FUNCTION(delegate_log_line_task_id),
    FUNCTION(delegate_log_line_step_id),
    FUNCTION(delegate_log_line_stream),
    FUNCTION(delegate_log_line_number),
    FUNCTION(delegate_log_line_text),
    FUNCTION(delegate_log_line_partial),
    FUNCTION(delegate_log_line_time_us),
    FUNCTION(delegate_result_status),
    FUNCTION(delegate_result_error),
    FUNCTION(delegate_result_task_id),
    FUNCTION(delegate_result_step_count),
    FUNCTION(delegate_result_step_id),
    FUNCTION(delegate_result_step_status),
    FUNCTION(delegate_result_step_exit_code),
    FUNCTION(delegate_result_step_error),
    FUNCTION(delegate_result_step_output),
    FUNCTION(delegate_result_json),
    FUNCTION(delegate_result_summary),
    FUNCTION(delegate_result_destroy),
    FUNCTION(delegate_server_options_create),
    FUNCTION(delegate_server_options_set_manager),
    FUNCTION(delegate_server_options_set_runtime_listen),
    FUNCTION(delegate_server_options_set_runtime_tls),
    FUNCTION(delegate_server_options_set_start_executors),
    FUNCTION(delegate_server_options_set_event_log),
    FUNCTION(delegate_server_options_destroy),
    FUNCTION(delegate_server_create),
    FUNCTION(delegate_server_start),
    FUNCTION(delegate_server_drain),
    FUNCTION(delegate_server_wait),
    FUNCTION(delegate_server_ops_port),
    FUNCTION(delegate_server_destroy),
#undef FUNCTION
};

int main(int argc, char** argv) {
  const size_t count = sizeof(kFunctions) / sizeof(kFunctions[0]);
  if (argc == 2 && strcmp(argv[1], "--list") == 0) {
    for (size_t i = 0; i < count; i++) printf("%s\n", kFunctions[i].name);
    return 0;
  }
  for (size_t i = 0; i < count; i++) {
    if (kFunctions[i].address == NULL) {
      fprintf(stderr, "%s: no address\n", kFunctions[i].name);
      return 1;
    }
  }

  char expected[64];
  snprintf(expected, sizeof(expected), "%d.%d.%d", delegate_version_major(),
           delegate_version_minor(), delegate_version_patch());
  if (strcmp(expected, delegate_version()) != 0) {
    fprintf(stderr, "version %s, but its parts say %s\n", delegate_version(),
            expected);
    return 1;
  }

  /* One call that fails, through errptr. */
  char* err = NULL;
  delegate_stage_t* stage = delegate_stage_parse("steps: 3", 8, "c11", &err);
  if (stage != NULL || err == NULL) {
    fprintf(stderr, "a stage without steps was accepted\n");
    delegate_stage_destroy(stage);
    return 1;
  }
  printf("libdelegate_c %s: %zu functions; a bad stage says: %s\n",
         delegate_version(), count, err);
  delegate_free(err);
  return 0;
}
