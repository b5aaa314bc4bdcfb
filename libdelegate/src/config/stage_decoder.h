// The stage schema: turns a stage document (stage_document.h), read from YAML
// or JSON alike, into a delegate::Stage, checking every field of the stage,
// its secrets, volumes and steps. Reading the file and formatting the problems
// for a person is stage_file.cc's part.
#ifndef DELEGATE_CONFIG_STAGE_DECODER_H_
#define DELEGATE_CONFIG_STAGE_DECODER_H_

#include <string>
#include <vector>

#include "config/stage_document.h"
#include "delegate/stage.h"

namespace delegate::config {

struct DecodedStage {
  // The stage; complete and valid only when `problems` is empty.
  Stage stage;
  // Everything wrong with the document, in the order found: decoding carries
  // on past each problem so that a user sees them all at once. Each has the
  // position of the node at fault and the path of the value, like
  // "steps[2].timeout" (empty for the document's root).
  std::vector<Problem> problems;
  // Every value found under `secrets`, valid or not. A message may quote the
  // document's text, which can be a secret's value, so these are masked
  // before problems are shown to anyone.
  std::vector<std::string> secret_values;
};

// Decodes the stage at `doc`'s root. Never fails otherwise than by problems.
// REQUIRES: doc.has_root.
DecodedStage DecodeStage(const Document& doc);

}  // namespace delegate::config

#endif  // DELEGATE_CONFIG_STAGE_DECODER_H_
