/*
 * delegate-keeper: the parent of one host step, and the subreaper of
 * everything the step starts, so that a process that left the step's group
 * (setsid, a double fork) still comes back to it. When the step exits it
 * kills all of that and exits like the step; when the delegate's process
 * dies (the lifeline pipe hangs up) it kills all of it at once.
 *
 * A small static program, embedded in libdelegate and started with
 * posix_spawn (process_launcher.cc): forking the delegate itself would copy
 * its page tables and make every page it writes while the step runs fault.
 *
 *   delegate-keeper [-u UID] [-g GID] [-C DIR] -- PROGRAM [ARG...]
 *
 * Descriptors: 0, 1 and 2 are the step's stdin, stdout and stderr; 3 is the
 * report pipe (8-byte records: {0, step pid}, or {what failed, errno}); 4,
 * when open, is the lifeline's read end. The environment is the step's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum {
  kStepPid = 0,
  kSetUpStdio = 1,
  kSwitchGroup = 2,
  kSwitchUser = 3,
  kEnterWorkdir = 4,
  kExecute = 5,
  kForkStep = 6,
  kUsage = 7,
};

static const int kReportFd = 3;
static const int kLifelineFd = 4;

static void Report(int code, int value) {
  int data[2] = {code, value};
  ssize_t w = write(kReportFd, data, sizeof(data));
  (void)w;
}

struct Step {
  char** argv;
  const char* dir;
  int set_gid;
  gid_t gid;
  int set_uid;
  uid_t uid;
};

static void StartStep(const struct Step* s) {
  setpgid(0, 0);
  struct sigaction dfl;
  memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &dfl, NULL);
  sigset_t empty;
  sigemptyset(&empty);
  sigprocmask(SIG_SETMASK, &empty, NULL);
  if (s->set_gid) {
    if (setgroups(1, &s->gid) != 0 || setgid(s->gid) != 0) {
      Report(kSwitchGroup, errno);
      _exit(127);
    }
  }
  if (s->set_uid && setuid(s->uid) != 0) {
    Report(kSwitchUser, errno);
    _exit(127);
  }
  if (s->dir && chdir(s->dir) != 0) {
    Report(kEnterWorkdir, errno);
    _exit(127);
  }
  execve(s->argv[0], s->argv, environ);
  Report(kExecute, errno);
  _exit(127);
}

/* The keeper's children from /proc/self/task/<pid>/children (zombies
 * included), at most `max`; -1 without the file. */
static int ListChildren(pid_t* out, int max) {
  char path[64];
  /* snprintf is fine here: a program of its own, one thread. */
  snprintf(path, sizeof(path), "/proc/self/task/%d/children", (int)getpid());
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[4096];
  int n = 0;
  pid_t pid = 0;
  ssize_t r;
  while ((r = read(fd, buf, sizeof(buf))) > 0) {
    for (ssize_t i = 0; i < r; ++i) {
      if (buf[i] >= '0' && buf[i] <= '9') {
        pid = pid * 10 + (buf[i] - '0');
      } else if (pid > 0) {
        if (n < max) out[n++] = pid;
        pid = 0;
      }
    }
  }
  if (pid > 0 && n < max) out[n++] = pid;
  close(fd);
  return n;
}

static long long NowMs(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Kills the step's group and every other process below the keeper (what
 * was re-parented to it), and reaps all but the step: the step stays a
 * zombie, so its pid and group id cannot be reused while the launcher may
 * still signal them; the caller reaps it. Once the step is dead, what it
 * left has 2 s to come back to the keeper and die; a step that does not
 * die within 30 s (uninterruptible sleep) is given up on. What is left
 * then goes to init. */
static void KillEverything(pid_t step) {
  kill(-step, SIGKILL);
  kill(step, SIGKILL);
  const long long give_up = NowMs() + 30000;
  long long step_dead_at = -1;
  static pid_t kids[4096];
  for (;;) {
    /* Whether the step is dead, asked before the listing: a process's
     * children are re-parented before it becomes a zombie, so once the
     * step is seen dead, all it left is in the listing that follows. (Asked
     * after it, the step could die in between and a child it left come back
     * to the keeper unlisted, then go to init when the keeper exits.) */
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    const int step_dead =
        waitid(P_PID, (id_t)step, &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
        info.si_pid == step;
    const int n = ListChildren(kids, 4096);
    if (n < 0) return; /* nothing to enumerate them with */
    int others = 0;
    for (int i = 0; i < n; ++i) {
      if (kids[i] == step) continue;
      ++others;
      kill(kids[i], SIGKILL);
      kill(-kids[i], SIGKILL);
      waitpid(kids[i], NULL, WNOHANG);
    }
    const long long now = NowMs();
    if (step_dead && step_dead_at < 0) step_dead_at = now;
    /* Done when the step was dead and nothing else was left: a process
     * still listed, even one dying, may yet hand its own children to the
     * keeper; none is listed only when no descendant is left. */
    if (step_dead && others == 0) return;
    if ((step_dead_at >= 0 && now > step_dead_at + 2000) || now > give_up) {
      return;
    }
    struct timespec pause = {0, 1000000};
    nanosleep(&pause, NULL);
  }
}

/* Ends the way the step ended, so the launcher sees its code or signal. */
static void EndLike(int wstatus) {
  if (WIFSIGNALED(wstatus)) {
    const int sig = WTERMSIG(wstatus);
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    signal(sig, SIG_DFL);
    sigset_t only;
    sigemptyset(&only);
    sigaddset(&only, sig);
    sigprocmask(SIG_UNBLOCK, &only, NULL);
    kill(getpid(), sig);
    _exit(128 + sig);
  }
  _exit(WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 127);
}

static int ParseId(const char* s, unsigned* out) {
  char* end = NULL;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v > 0xffffffffUL) return 0;
  *out = (unsigned)v;
  return 1;
}

int main(int argc, char** argv) {
  struct Step step;
  memset(&step, 0, sizeof(step));
  int i = 1;
  for (; i < argc; ++i) {
    unsigned v;
    if (strcmp(argv[i], "--") == 0) {
      ++i;
      break;
    } else if (strcmp(argv[i], "-u") == 0 && i + 1 < argc &&
               ParseId(argv[i + 1], &v)) {
      step.set_uid = 1;
      step.uid = (uid_t)v;
      ++i;
    } else if (strcmp(argv[i], "-g") == 0 && i + 1 < argc &&
               ParseId(argv[i + 1], &v)) {
      step.set_gid = 1;
      step.gid = (gid_t)v;
      ++i;
    } else if (strcmp(argv[i], "-C") == 0 && i + 1 < argc) {
      step.dir = argv[++i];
    } else {
      Report(kUsage, EINVAL);
      return 127;
    }
  }
  if (i >= argc) {
    Report(kUsage, EINVAL);
    return 127;
  }
  step.argv = argv + i;

  /* Like the delegate, not readable or traceable by the step's user: the
   * step cannot use the keeper's descriptors or read its /proc entries.
   * (The step's own exec makes it dumpable again.) */
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, NULL);
  /* Terminal and session signals sent to the delegate's group are not for
   * the keeper: the step gets them through its own group. */
  const int ignored[] = {SIGINT,  SIGQUIT, SIGHUP,  SIGTERM, SIGPIPE,
                         SIGTSTP, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2};
  for (size_t k = 0; k < sizeof(ignored) / sizeof(ignored[0]); ++k) {
    signal(ignored[k], SIG_IGN);
  }
  fcntl(kReportFd, F_SETFD, FD_CLOEXEC);
  const int lifeline = fcntl(kLifelineFd, F_GETFD) >= 0 ? kLifelineFd : -1;
  if (lifeline >= 0) fcntl(lifeline, F_SETFD, FD_CLOEXEC);
  prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  if (lifeline >= 0) {
    /* The delegate may have died before the subreaper was set. */
    struct pollfd p = {lifeline, POLLIN, 0};
    if (poll(&p, 1, 0) > 0) return 127;
  }
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  const int child_fd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  const pid_t pid = fork();
  if (pid < 0) {
    Report(kForkStep, errno);
    return 127;
  }
  if (pid == 0) StartStep(&step);
  setpgid(pid, pid); /* also here, so the launcher can signal it at once */
  Report(kStepPid, pid);
  close(kReportFd);
  /* The step's output pipes are the step's: holding them would keep the
   * launcher reading after the step is gone. */
  int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null_fd >= 0) {
    dup2(null_fd, 1);
    dup2(null_fd, 2);
    close(null_fd);
  } else {
    close(1);
    close(2);
  }
  for (;;) {
    struct pollfd fds[2];
    int n = 0;
    int life_i = -1;
    if (child_fd >= 0) {
      fds[n].fd = child_fd;
      fds[n].events = POLLIN;
      fds[n].revents = 0;
      ++n;
    }
    if (lifeline >= 0) {
      life_i = n;
      fds[n].fd = lifeline;
      fds[n].events = POLLIN;
      fds[n].revents = 0;
      ++n;
    }
    /* Without a signalfd, exits are noticed by polling. */
    if (poll(fds, n, child_fd >= 0 ? -1 : 50) < 0 && errno != EINTR) {
      struct timespec pause = {0, 50000000};
      nanosleep(&pause, NULL);
    }
    if (life_i >= 0 && fds[life_i].revents != 0) {
      KillEverything(pid);
      return 128 + SIGKILL;
    }
    if (child_fd >= 0) {
      struct signalfd_siginfo info;
      while (read(child_fd, &info, sizeof(info)) > 0) {
      }
    }
    /* Reap what exited; the step last, after its group is killed while its
     * zombie still holds the group's id. */
    for (;;) {
      siginfo_t info;
      memset(&info, 0, sizeof(info));
      if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0 ||
          info.si_pid == 0) {
        break;
      }
      if (info.si_pid == pid) {
        KillEverything(pid);
        int wstatus = 0;
        while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
        }
        EndLike(wstatus);
      }
      while (waitpid(info.si_pid, NULL, 0) < 0 && errno == EINTR) {
      }
    }
  }
}
