/* Runs a stage file through libdelegate's C API: the built-in executors,
 * plus "dry-run", an executor written in C that prints what each step would
 * run. Log lines go to stdout as they come, then the result as JSON.
 *
 *   run_stage STAGE.yaml        exit 0 when every step succeeded
 */
#include <delegate/c.h>
#include <stdio.h>
#include <string.h>

/* platform: dry-run. Called once per step, on a scheduler thread. */
static void dry_run_step(void* state, delegate_step_context_t* step) {
  (void)state;
  for (size_t i = 0; i < delegate_step_context_command_count(step); i++) {
    const char* command = delegate_step_context_command(step, i);
    delegate_step_context_write(step, DELEGATE_STREAM_STDOUT,
                                "would run: ", 11);
    delegate_step_context_write(step, DELEGATE_STREAM_STDOUT, command,
                                strlen(command));
    delegate_step_context_write(step, DELEGATE_STREAM_STDOUT, "\n", 1);
  }
  for (size_t i = 0; i < delegate_step_context_output_count(step); i++) {
    delegate_step_context_set_output(
        step, delegate_step_context_output_name(step, i), "(dry run)");
  }
  delegate_step_context_set_exit_code(step, 0);
}

/* Every log line of the stage, masked, in order. */
static void print_line(void* state, const delegate_log_line_t* line) {
  (void)state;
  const char* step = delegate_log_line_step_id(line);
  printf("%-8s| %s\n", step[0] ? step : "stage",
         delegate_log_line_text(line, NULL));
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s STAGE.yaml\n", argv[0]);
    return 2;
  }
  printf("libdelegate %s\n", delegate_version());

  /* Each call leaves err NULL or sets it; once set, the rest is skipped. */
  char* err = NULL;
  delegate_config_t* config =
      delegate_config_load(NULL, NULL, DELEGATE_CONFIG_LOCAL, &err);
  delegate_registry_t* registry = delegate_registry_create();
  if (err == NULL) {
    delegate_registry_register_builtins(registry, config, NULL, &err);
  }
  if (err == NULL) {
    delegate_registry_register_executor(registry, "dry-run", NULL, NULL, NULL,
                                        dry_run_step, NULL, &err);
  }
  delegate_stage_t* stage =
      err == NULL ? delegate_stage_load_file(argv[1], &err) : NULL;
  delegate_scheduler_t* scheduler =
      err == NULL ? delegate_scheduler_create(registry, config, NULL, &err)
                  : NULL;
  /* Blocks until the stage is cleaned up. A stage the scheduler refuses is
   * an error listing every problem, one a line. */
  delegate_result_t* result =
      err == NULL ? delegate_scheduler_run(scheduler, stage, NULL, NULL, NULL,
                                           print_line, &err)
                  : NULL;

  int code = 2;
  if (result != NULL) {
    char* json = delegate_result_json(result);
    printf("%s\n", json);
    delegate_free(json);
    code = delegate_result_status(result) == DELEGATE_STATUS_SUCCESS ? 0 : 1;
  } else {
    fprintf(stderr, "%s\n", err);
  }
  delegate_free(err);
  delegate_result_destroy(result);
  delegate_scheduler_destroy(scheduler);
  delegate_stage_destroy(stage);
  delegate_registry_destroy(registry);
  delegate_config_destroy(config);
  return code;
}
