// DelegateSession's batches (session.proto: DelegateBatch, ManagerBatch):
// what a writer has due at once goes on the stream as one message.
#ifndef DELEGATE_MANAGER_GRPC_SESSION_BATCH_H_
#define DELEGATE_MANAGER_GRPC_SESSION_BATCH_H_

#include <vector>

namespace delegate::grpcv1 {

// One message for all of `messages` (moved out; the vector is left empty):
// the message itself when there is one, else a batch of them in order.
// Message: v1::DelegateMessage or v1::ManagerMessage. REQUIRES: non-empty.
template <typename Message>
Message PackBatch(std::vector<Message>& messages) {
  Message packed;
  if (messages.size() == 1) {
    packed.Swap(&messages[0]);
  } else {
    for (Message& m : messages)
      packed.mutable_batch()->add_messages()->Swap(&m);
  }
  messages.clear();
  return packed;
}

}  // namespace delegate::grpcv1

#endif  // DELEGATE_MANAGER_GRPC_SESSION_BATCH_H_
