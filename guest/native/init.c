/* initkit's native init: the guest init's boot path for one-shot actions, in C.
 *
 * Why it exists: under TCG every instruction a process runs is translated the first
 * time, and CPython's start alone costs a boot ~180 ms before the first line of the
 * Python init (docs/benchmarks.md, "Where a minimal-kernel boot's time goes"). This
 * program is /init when initbuilder could compile it (initbuilder/nativeinit.py). It
 * does what the Python init does (guest/boot.py, guest/plan.py, guest/system.py) for
 * the command lines it fully understands: tvix.exec=, tvix.run=, tvix.shell[=] with
 * tvix.tag=, initkit.nonce=, initkit.noecho, initkit.test.store= and any words not
 * under tvix./initkit.;
 * for everything else (tvix.find, init=, the control channel, initkit.debug, a word
 * after "--", any byte outside printable ASCII, a malformed value, an unknown key) it
 * execs the Python init, which sees the machine as the kernel left it.
 *
 * Its messages, status records and exit codes are the Python init's, byte for byte:
 * tests/guest/test_native.py compares the two on the same command lines, and the e2e
 * suite boots both. The names it shares with the host come from guest/contract.py, as
 * the header initbuilder generates (-include); nothing else is configured.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef INITKIT_CONTRACT
#error "compile with -include of the contract header (initbuilder/nativeinit.py)"
#endif

#define MAX_CMDLINE 65536
#define MAX_PARAMS 1024
#define MAX_ARGV 256
#define MAX_LIST 65536

/* -- the command line, by guest/cmdline.py's rules (the kernel's next_arg) ----------- */
struct param {
    const char *key;
    const char *value; /* NULL: a bare flag */
};

struct cmdline {
    struct param params[MAX_PARAMS];
    int count;
    int init_part; /* a "--" was seen: words for init follow */
    int overflow;  /* more than MAX_PARAMS words: some were not kept */
};

static int is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r' ||
           c == 0xa0;
}

/* Split data[0..len) into cl; ``arena`` (2 * len + 2 bytes) holds the pieces. */
static void parse_cmdline(const char *data, size_t len, struct cmdline *cl, char *arena) {
    size_t pos = 0;
    cl->count = 0;
    cl->init_part = 0;
    cl->overflow = 0;
    while (pos < len && is_space((unsigned char)data[pos]))
        pos++;
    while (pos < len) {
        int quoted = data[pos] == '"';
        if (quoted)
            pos++;
        int in_quote = quoted;
        size_t start = pos, end = pos, equals = 0;
        while (end < len) {
            char c = data[end];
            if (is_space((unsigned char)c) && !in_quote)
                break;
            if (equals == 0 && c == '=')
                equals = end - start;
            if (c == '"')
                in_quote = !in_quote;
            end++;
        }
        int last_is_quote = end > start && data[end - 1] == '"';
        size_t key_start = start, key_end, value_start = 0, value_end = 0;
        int has_value = equals != 0;
        if (!has_value) {
            key_end = quoted && last_is_quote ? end - 1 : end;
        } else {
            key_end = start + equals;
            value_start = start + equals + 1;
            value_end = end;
            if (value_start < end && data[value_start] == '"') {
                value_start++;
                if (last_is_quote)
                    value_end = end - 1;
            } else if (quoted && last_is_quote) {
                value_end = end - 1;
            }
            if (value_end < value_start)
                value_end = value_start;
        }
        char *key = arena;
        memcpy(arena, data + key_start, key_end - key_start);
        arena += key_end - key_start;
        *arena++ = 0;
        char *value = NULL;
        if (has_value) {
            value = arena;
            memcpy(arena, data + value_start, value_end - value_start);
            arena += value_end - value_start;
            *arena++ = 0;
        }
        if (!cl->init_part && !has_value && strcmp(key, "--") == 0) {
            cl->init_part = 1;
        } else if (cl->count < MAX_PARAMS) {
            cl->params[cl->count].key = key;
            cl->params[cl->count].value = value;
            cl->count++;
        } else {
            cl->overflow = 1;
        }
        pos = end;
        while (pos < len && is_space((unsigned char)data[pos]))
            pos++;
    }
}

static int has_key(const struct cmdline *cl, const char *key) {
    for (int i = 0; i < cl->count; i++)
        if (strcmp(cl->params[i].key, key) == 0)
            return 1;
    return 0;
}

/* The last value given to key; NULL if absent or the last is a bare flag. */
static const char *value_of(const struct cmdline *cl, const char *key) {
    for (int i = cl->count - 1; i >= 0; i--)
        if (strcmp(cl->params[i].key, key) == 0)
            return cl->params[i].value;
    return NULL;
}

static int starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* -- the plan: what guest/plan.py's make_plan decides, for what this program runs ----- */
struct plan {
    const char *argv[MAX_ARGV + 4];
    int store_needed;
    int echo;
    const char *nonce;
    const char *tag;
    const char *test_store; /* initkit.test.store: bind this on the store instead */
    const char *why_python; /* non-NULL: hand the boot to the Python init, for this */
    char words[MAX_CMDLINE];
};

static int valid_nonce(const char *text) {
    if (text == NULL || strlen(text) != CONTRACT_NONCE_LENGTH)
        return 0;
    for (const char *p = text; *p; p++)
        if (!strchr("0123456789abcdefABCDEF", *p))
            return 0;
    return 1;
}

static int blank(const char *s) {
    for (; *s; s++)
        if (*s != ' ')
            return 0;
    return 1;
}

/* contract.exec_argv: the value's words (str.split(); values here are printable ASCII,
 * so its only whitespace is the space). */
static int split_words(const char *value, char *buffer, const char **argv) {
    int count = 0;
    strcpy(buffer, value);
    for (char *word = strtok(buffer, " "); word != NULL; word = strtok(NULL, " ")) {
        if (count >= MAX_ARGV)
            return -1;
        argv[count++] = word;
    }
    argv[count] = NULL;
    return count;
}

static const char *find_shell(void) {
    if (access(CONTRACT_SHELL, X_OK) == 0)
        return CONTRACT_SHELL;
    if (access(CONTRACT_BUSYBOX, X_OK) == 0)
        return CONTRACT_BUSYBOX;
    return NULL;
}

/* Fill ``plan`` from the raw /proc/cmdline bytes. ``shell``: find_shell()'s answer. */
static void make_plan(const char *raw, size_t len, const char *shell, struct plan *plan,
                      struct cmdline *cl, char *arena) {
    static const char *const native_keys[] = {CONTRACT_EXEC_KEY, CONTRACT_RUN_KEY,
                                              CONTRACT_SHELL_KEY, CONTRACT_TAG_KEY,
                                              CONTRACT_NONCE_KEY, CONTRACT_NOECHO_KEY,
                                              CONTRACT_TEST_STORE_KEY};
    memset(plan->argv, 0, sizeof plan->argv);
    plan->why_python = NULL;
    parse_cmdline(raw, len, cl, arena);
    /* The nonce first: a boot that cannot be handed over still reports with it. */
    const char *nonce = value_of(cl, CONTRACT_NONCE_KEY);
    plan->nonce = valid_nonce(nonce) ? nonce : CONTRACT_NO_NONCE;
    /* /proc/cmdline ends in a newline, which is a space to the parser unless a quote
     * is open: then it is part of the last word, and that word is the Python init's. */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)raw[i];
        if ((c < 0x20 || c > 0x7e) && !(c == '\n' && i == len - 1)) {
            plan->why_python = "a byte outside printable ASCII";
            return;
        }
    }
    if (cl->init_part || cl->overflow) {
        plan->why_python = cl->init_part ? "words after --" : "too many words";
        return;
    }
    for (int i = 0; i < cl->count; i++) {
        const char *key = cl->params[i].key, *value = cl->params[i].value;
        int known = 0;
        if (strchr(key, '\n') || (value != NULL && strchr(value, '\n'))) {
            plan->why_python = "a newline inside a quoted word";
            return;
        }
        if (strcmp(key, CONTRACT_INIT_KEY) == 0) {
            plan->why_python = "init=";
            return;
        }
        if (!starts_with(key, "tvix.") && !starts_with(key, "initkit."))
            continue;
        for (size_t k = 0; k < sizeof native_keys / sizeof native_keys[0]; k++)
            known |= strcmp(key, native_keys[k]) == 0;
        if (!known) {
            plan->why_python = key;
            return;
        }
    }
    if (nonce != NULL && !valid_nonce(nonce)) {
        plan->why_python = "an invalid nonce"; /* the Python init warns of it */
        return;
    }
    const char *action = NULL;
    static const char *const actions[] = {CONTRACT_SHELL_KEY, CONTRACT_EXEC_KEY,
                                          CONTRACT_RUN_KEY};
    for (size_t k = 0; k < 3 && action == NULL; k++)
        if (has_key(cl, actions[k]))
            action = actions[k];
    if (action == NULL) {
        plan->why_python = "no action";
        return;
    }
    const char *value = value_of(cl, action);
    if (value == NULL || blank(value))
        value = "";
    plan->store_needed = 1;
    if (strcmp(action, CONTRACT_SHELL_KEY) == 0) {
        plan->store_needed = 0;
        if (*value) {
            if (split_words(value, plan->words, plan->argv) < 0)
                plan->why_python = "too many words";
        } else if (shell == NULL) {
            plan->why_python = "no shell";
        } else {
            plan->argv[0] = shell;
            plan->argv[1] = strcmp(shell, CONTRACT_BUSYBOX) == 0 ? "sh" : NULL;
        }
    } else if (strcmp(action, CONTRACT_EXEC_KEY) == 0) {
        if (!*value)
            plan->why_python = "no program";
        else if (split_words(value, plan->words, plan->argv) < 0)
            plan->why_python = "too many words";
    } else {
        if (!*value || shell == NULL) {
            plan->why_python = "no command or no shell";
        } else {
            int n = 0;
            plan->argv[n++] = shell;
            if (strcmp(shell, CONTRACT_BUSYBOX) == 0)
                plan->argv[n++] = "sh";
            plan->argv[n++] = "-c";
            plan->argv[n++] = value;
            plan->argv[n] = NULL;
        }
    }
    const char *tag = value_of(cl, CONTRACT_TAG_KEY);
    plan->tag = tag != NULL && *tag ? tag : CONTRACT_DEFAULT_TAG;
    const char *test_store = value_of(cl, CONTRACT_TEST_STORE_KEY);
    plan->test_store = test_store != NULL && *test_store ? test_store : NULL;
    plan->echo = !has_key(cl, CONTRACT_NOECHO_KEY);
}

/* -- messages, as guest/boot.py words them -------------------------------------------- */
/* errno.errorcode's name for ``number``, where CPython's differs from glibc's. */
static const char *errno_name(int number) {
    switch (number) {
    case EDEADLK:
        return "EDEADLOCK";
    case EOPNOTSUPP:
        return "ENOTSUP";
    }
    const char *name = strerrorname_np(number);
    return name != NULL ? name : "?";
}

/* boot.describe(): "errno 2 ENOENT (No such file or directory)", plus ``extra`` inside. */
static void describe(char *out, size_t size, int number, const char *extra) {
    snprintf(out, size, "errno %d %s (%s%s)", number, errno_name(number), strerror(number),
             extra);
}

/* Python's repr() of a printable-ASCII str. */
static void py_repr(char *out, size_t size, const char *text) {
    char quote = strchr(text, '\'') && !strchr(text, '"') ? '"' : '\'';
    size_t n = 0;
    if (size < 4)
        return;
    out[n++] = quote;
    for (const char *p = text; *p && n + 4 < size; p++) {
        if (*p == '\\' || *p == quote)
            out[n++] = '\\';
        out[n++] = *p;
    }
    out[n++] = quote;
    out[n] = 0;
}

static void write_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t written = write(fd, data, len);
        if (written < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        data += written;
        len -= (size_t)written;
    }
}

static void say(const char *format, ...) {
    char line[16384];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(line + 9, sizeof line - 10, format, args);
    va_end(args);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 11)
        n = sizeof line - 11;
    memcpy(line, "initkit: ", 9);
    line[9 + n] = '\n';
    write_all(2, line, 9 + (size_t)n + 1);
}

/* -- the steps --------------------------------------------------------------------- */
static int make_dirs(const char *path) {
    char current[4096];
    size_t n = 0;
    for (const char *p = path; *p;) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (n + len + 2 > sizeof current) {
            errno = ENAMETOOLONG;
            return -1;
        }
        current[n++] = '/';
        memcpy(current + n, p, len);
        n += len;
        current[n] = 0;
        p += len;
        if (mkdir(current, 0755) != 0) {
            struct stat st;
            int err = errno;
            if (err == EEXIST) {
                if (stat(current, &st) != 0)
                    return -1;
                if (!S_ISDIR(st.st_mode)) {
                    errno = EEXIST;
                    return -1;
                }
            } else if (lstat(current, &st) != 0) {
                errno = err;
                return -1;
            }
        }
    }
    return 0;
}

/* One mount step: 0, or -1 with the failure reported (with ``hint`` if there is one)
 * and its message left in ``message``. */
static int mount_step(const char *source, const char *target, const char *fstype,
                      unsigned long flags, const char *data, const char *hint, char *message,
                      size_t size) {
    char repr[4200], why[512], label[4400];
    int remount = (flags & MS_REMOUNT) != 0;
    if ((remount || make_dirs(target) == 0) && mount(source, target, fstype, flags, data) == 0)
        return 0;
    int err = errno;
    py_repr(repr, sizeof repr, source);
    describe(why, sizeof why, err, "");
    if (remount)
        snprintf(label, sizeof label, "remount %s", target);
    else
        snprintf(label, sizeof label, "mount %s %s on %s", fstype ? fstype : "bind", repr,
                 target);
    snprintf(message, size, "%s failed: %s%s%s", label, why, hint ? "; " : "",
             hint ? hint : "");
    say("%s", message);
    return -1;
}

static void ensure_console(const char *path) {
    struct stat console, st;
    int have_console = stat(path, &console) == 0;
    int stale[3], count = 0;
    for (int fd = 0; fd < 3; fd++) {
        if (fstat(fd, &st) != 0) {
            stale[count++] = fd;
        } else if (have_console && S_ISCHR(st.st_mode) && st.st_rdev == console.st_rdev &&
                   (st.st_dev != console.st_dev || st.st_ino != console.st_ino)) {
            stale[count++] = fd;
        }
    }
    if (count == 0)
        return;
    int fd = open(path, O_RDWR | O_NOCTTY);
    if (fd < 0) {
        char why[512];
        describe(why, sizeof why, errno, "");
        say("open console %s failed: %s", path, why);
        return;
    }
    for (int i = 0; i < count; i++)
        dup2(fd, stale[i]);
    if (fd > 2)
        close(fd);
}

static void link_step(const char *path, const char *target) {
    struct stat st;
    if (lstat(path, &st) == 0 || symlink(target, path) == 0)
        return;
    char why[512];
    describe(why, sizeof why, errno, "");
    say("link %s failed: %s", path, why);
}

static void early_steps(void) {
    unsigned long nosuid_nodev = MS_NOSUID | MS_NODEV;
    char unused[2048];
    mount_step("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", NULL, unused, sizeof unused);
    ensure_console("/dev/console");
    mount_step("proc", "/proc", "proc", nosuid_nodev | MS_NOEXEC, NULL, NULL, unused, sizeof unused);
    mount_step("sysfs", "/sys", "sysfs", nosuid_nodev | MS_NOEXEC, NULL, NULL, unused, sizeof unused);
    mount_step("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777", NULL, unused, sizeof unused);
    mount_step("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755", NULL, unused, sizeof unused);
    mount_step("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
               "mode=0620,ptmxmode=0666", NULL, unused, sizeof unused);
    link_step("/dev/fd", "/proc/self/fd");
    link_step("/dev/stdin", "/proc/self/fd/0");
    link_step("/dev/stdout", "/proc/self/fd/1");
    link_step("/dev/stderr", "/proc/self/fd/2");
}

/* A list file's text (NUL-terminated) into ``buffer``; 0 if it is missing or empty. */
static size_t read_list(const char *path, char *buffer, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    size_t n = 0;
    while (n + 1 < size) {
        ssize_t got = read(fd, buffer + n, size - 1 - n);
        if (got <= 0)
            break;
        n += (size_t)got;
    }
    close(fd);
    buffer[n] = 0;
    return n;
}

/* contract.listed_paths: the next stripped, non-blank, non-comment line, or NULL. */
static char *next_listed(char **cursor) {
    while (**cursor) {
        char *line = *cursor, *end = strchr(line, '\n');
        if (end != NULL) {
            *end = 0;
            *cursor = end + 1;
        } else {
            *cursor = line + strlen(line);
        }
        while (*line && strchr(" \t\r\v\f", *line))
            line++;
        size_t len = strlen(line);
        while (len > 0 && strchr(" \t\r\v\f", line[len - 1]))
            line[--len] = 0;
        if (len > 0 && line[0] != '#')
            return line;
    }
    return NULL;
}

static void link_applets(void) {
    static char list[MAX_LIST];
    if (read_list(CONTRACT_APPLET_LIST, list, sizeof list) == 0)
        return;
    char *cursor = list, *path;
    int total = 0, failed = 0, first_errno = 0;
    while ((path = next_listed(&cursor)) != NULL) {
        total++;
        if (symlink(CONTRACT_BUSYBOX, path) != 0 && errno != EEXIST) {
            if (failed++ == 0)
                first_errno = errno;
        }
    }
    if (failed) {
        char extra[64], why[512];
        snprintf(extra, sizeof extra, " (%d of %d paths failed)", failed, total);
        describe(why, sizeof why, first_errno, extra);
        say("link %d paths to %s failed: %s", total, CONTRACT_BUSYBOX, why);
    }
}

static void load_modules(void) {
    static char list[MAX_LIST];
    if (read_list(CONTRACT_MODULE_LIST, list, sizeof list) == 0)
        return;
    char *cursor = list, *path;
    while ((path = next_listed(&cursor)) != NULL) {
        int fd = open(path, O_RDONLY | O_CLOEXEC), err = 0;
        if (fd < 0) {
            err = errno;
        } else {
            if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
                err = errno;
            close(fd);
        }
        if (err) {
            char why[512];
            describe(why, sizeof why, err, "");
            say("load module %s failed: %s", path, why);
        }
    }
}

/* -- the action --------------------------------------------------------------------- */
static volatile sig_atomic_t shutdown_signal;

static void on_shutdown(int signum) {
    shutdown_signal = signum;
}

static void catch_shutdown_signals(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_shutdown; /* no SA_RESTART: a wait returns EINTR */
    sigemptyset(&action.sa_mask);
    for (int signum = 0; signum < 4; signum++)
        sigaction((int[]){SIGUSR1, SIGUSR2, SIGTERM, SIGINT}[signum], &action, NULL);
}

/* osfuncs.execvpe: search the child's PATH unless the name has a slash; the most telling
 * error wins (anything but ENOENT/ENOTDIR). Returns only on failure, errno set. */
static void exec_search(const char *const *argv, char *const *env) {
    const char *file = argv[0];
    if (strchr(file, '/')) {
        execve(file, (char *const *)argv, env);
        return;
    }
    int error = 0;
    const char *path = CONTRACT_DEFAULT_PATH;
    for (;;) {
        const char *end = strchr(path, ':');
        size_t len = end ? (size_t)(end - path) : strlen(path);
        char candidate[4096];
        snprintf(candidate, sizeof candidate, "%.*s/%s", (int)len, len ? path : ".", file);
        execve(candidate, (char *const *)argv, env);
        int err = errno;
        if (err == ENOENT || err == ENOTDIR) {
            if (!error)
                error = err;
        } else if (!error || error == ENOENT || error == ENOTDIR) {
            error = err;
        }
        if (!end)
            break;
        path = end + 1;
    }
    errno = error ? error : ENOENT;
}

struct status {
    const char *kind; /* "exit" or "signal" */
    int number;
};

static struct status from_wait(int status) {
    if (WIFSIGNALED(status))
        return (struct status){"signal", WTERMSIG(status)};
    return (struct status){"exit", WEXITSTATUS(status)};
}

static struct status shutdown_status(void) {
    say("power-off requested by signal %d; ending every process", (int)shutdown_signal);
    return (struct status){"exit", 0};
}

static struct status spawn_and_wait(const struct plan *plan, char *const *env) {
    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
        char why[512];
        describe(why, sizeof why, errno, "");
        say("cannot run %s: %s", plan->argv[0], why);
        return (struct status){"exit", CONTRACT_NOT_EXECUTABLE};
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(pipe_fds[0]);
        setsid();
        if (isatty(0))
            ioctl(0, TIOCSCTTY, 1); /* steal the console if a session had it */
        signal(SIGPIPE, SIG_DFL);
        signal(SIGXFSZ, SIG_DFL);
        exec_search(plan->argv, env);
        char reply[16];
        int n = snprintf(reply, sizeof reply, "%d", errno ? errno : EIO);
        write_all(pipe_fds[1], reply, (size_t)n);
        _exit(127);
    }
    close(pipe_fds[1]);
    if (pid < 0) {
        int err = errno;
        close(pipe_fds[0]);
        char why[512];
        describe(why, sizeof why, err, "");
        say("cannot run %s: %s", plan->argv[0], why);
        return (struct status){"exit", CONTRACT_NOT_EXECUTABLE};
    }
    char reply[16];
    size_t got = 0;
    for (;;) {
        ssize_t n = read(pipe_fds[0], reply + got, sizeof reply - 1 - got);
        if (n < 0 && errno == EINTR) {
            if (shutdown_signal) {
                close(pipe_fds[0]);
                return shutdown_status();
            }
            continue;
        }
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(pipe_fds[0]);
    if (got > 0) {
        reply[got] = 0;
        int err = atoi(reply), status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        int code = err == ENOENT || err == ENOTDIR ? CONTRACT_NOT_FOUND
                                                    : CONTRACT_NOT_EXECUTABLE;
        const char *program = plan->argv[0];
        char why[512];
        struct stat st;
        describe(why, sizeof why, err, "");
        if (err == ENOENT && strchr(program, '/') && lstat(program, &st) == 0)
            say("cannot run %s: %s; the file exists, so its ELF interpreter or #! "
                "interpreter is missing", program, why);
        else
            say("cannot run %s: %s", program, why);
        return (struct status){"exit", code};
    }
    for (;;) {
        int status;
        pid_t ended = waitpid(-1, &status, 0);
        if (ended == pid)
            return from_wait(status);
        if (ended < 0 && errno == EINTR) {
            if (shutdown_signal)
                return shutdown_status();
            continue;
        }
        if (ended < 0) {
            say("lost track of process %d", (int)pid);
            return (struct status){"exit", CONTRACT_INIT_FAILED};
        }
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* System.end_all: SIGTERM every other process, reap, SIGKILL what is left. */
static void end_all(double grace) {
    int signals[2] = {SIGTERM, SIGKILL};
    for (int i = 0; i < 2; i++) {
        kill(-1, signals[i]);
        double deadline = now() + grace;
        for (;;) {
            pid_t pid = waitpid(-1, NULL, WNOHANG);
            if (pid < 0 && errno == ECHILD)
                return;
            if (pid > 0 || (pid < 0 && errno == EINTR))
                continue;
            if (now() >= deadline)
                break;
            struct timespec pause = {0, 5000000};
            nanosleep(&pause, NULL);
        }
    }
}

/* The store's mounts (plan.py's _store_mounts): 0, or -1 with the failure in ``message``;
 * a failure of a mount the action needs skips what follows, as run_steps does. */
static int mount_store(const struct plan *plan, char *message, size_t size) {
    char hint[4400], repr[4200];
    if (plan->test_store != NULL) {
        snprintf(hint, sizeof hint, "%s=%s must name a directory in the guest",
                 CONTRACT_TEST_STORE_KEY, plan->test_store);
        int failed = mount_step(plan->test_store, CONTRACT_STORE, NULL, MS_BIND, NULL, hint,
                                message, size) != 0;
        if (failed && plan->store_needed)
            return -1;
        failed |= mount_step("none", CONTRACT_STORE, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY,
                             NULL, hint, message, size) != 0;
        return failed ? -1 : 0;
    }
    py_repr(repr, sizeof repr, plan->tag);
    snprintf(hint, sizeof hint,
             "is a virtiofs device with tag %s attached (hostrun does this), and is the "
             "virtiofs module in the initrd or built in?", repr);
    return mount_step(plan->tag, CONTRACT_STORE, "virtiofs", MS_RDONLY, NULL, hint, message,
                      size);
}

/* -- PID 1 ---------------------------------------------------------------------------- */
static void hand_to_python(char **argv, char **envp, const char *why) {
    (void)why;
    execve(CONTRACT_PYTHON_INIT, argv, envp);
    char text[512];
    describe(text, sizeof text, errno, "");
    say("cannot start the Python init %s: %s", CONTRACT_PYTHON_INIT, text);
}

static size_t read_cmdline(char *buffer, size_t size) {
    /* /proc is mounted for this read only, so that the Python init, if it takes over,
     * finds the machine as the kernel left it. */
    size_t n = 0;
    if (mkdir("/proc", 0555) != 0 && errno != EEXIST)
        return (size_t)-1;
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        return (size_t)-1;
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        for (;;) {
            ssize_t got = read(fd, buffer + n, size - n);
            if (got <= 0)
                break;
            n += (size_t)got;
            if (n == size) {
                n = (size_t)-1; /* longer than any command line: the Python init's */
                break;
            }
        }
        close(fd);
    } else {
        n = (size_t)-1;
    }
    umount2("/proc", 0);
    return n;
}

#ifndef INITKIT_NATIVE_TEST
int main(int argc, char **argv, char **envp) {
    static char raw[MAX_CMDLINE], arena[2 * MAX_CMDLINE + 2];
    static struct cmdline cl;
    static struct plan plan;
    (void)argc;
    if (getpid() != 1) {
        hand_to_python(argv, envp, "not PID 1"); /* which refuses, saying why */
        return 1;
    }
    const char *test = getenv(CONTRACT_CMDLINE_ENV);
    size_t len = test != NULL ? strlen(test) : read_cmdline(raw, sizeof raw - 1);
    if (test != NULL && len < sizeof raw)
        memcpy(raw, test, len);
    else if (test != NULL)
        len = (size_t)-1;
    if (len == (size_t)-1) {
        plan.why_python = "no readable /proc/cmdline";
        plan.nonce = CONTRACT_NO_NONCE;
    } else {
        make_plan(raw, len, find_shell(), &plan, &cl, arena);
    }
    if (plan.why_python != NULL) {
        hand_to_python(argv, envp, plan.why_python);
        /* no Python init: carry on with what this program can say */
        plan.why_python = NULL;
        plan.argv[0] = NULL;
    }
    struct status status = {"exit", CONTRACT_INIT_FAILED};
    early_steps();
    if (plan.argv[0] == NULL) {
        say("the command line needs the Python init (%s), which this initrd lacks",
            CONTRACT_PYTHON_INIT);
    } else {
        char fatal[12000] = "";
        link_applets();
        load_modules();
        if (make_dirs(CONTRACT_STORE) != 0) {
            char why[512];
            describe(why, sizeof why, errno, "");
            say("create %s failed: %s", CONTRACT_STORE, why);
        }
        if (mount_store(&plan, fatal, sizeof fatal) != 0 && plan.store_needed) {
            say("%s; not starting the action", fatal);
        } else {
            static char term[256];
            const char *given = getenv("TERM");
            snprintf(term, sizeof term, "TERM=%s", given && *given ? given : "linux");
            char *env[] = {"PATH=" CONTRACT_DEFAULT_PATH, "HOME=/", term, NULL};
            catch_shutdown_signals();
            if (!plan.echo) {
                struct termios attrs;
                if (tcgetattr(0, &attrs) != 0 ||
                    (attrs.c_lflag &= ~(tcflag_t)ECHO, tcsetattr(0, TCSANOW, &attrs)) != 0) {
                    char why[512];
                    describe(why, sizeof why, errno, "");
                    say("cannot turn off the console's echo: %s", why);
                }
            }
            char ready[128];
            int n = snprintf(ready, sizeof ready, "\n%s:%s:%s\n", CONTRACT_STATUS_PREFIX,
                             plan.nonce, CONTRACT_READY);
            write_all(1, ready, (size_t)n);
            status = spawn_and_wait(&plan, env);
        }
    }
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    end_all(CONTRACT_GRACE_SECONDS);
    char record[128];
    int n = snprintf(record, sizeof record, "\n%s:%s:%s=%d\n", CONTRACT_STATUS_PREFIX,
                     plan.nonce, status.kind, status.number);
    write_all(1, record, (size_t)n);
    ioctl(1, TCSBRK, 1); /* tcdrain: the console sends the record before the power-off */
    sync();
    if (reboot(RB_POWER_OFF) != 0) {
        char why[512];
        describe(why, sizeof why, errno, "");
        say("the init failed:\nreboot: %s", why);
    }
    for (;;)
        pause(); /* init exiting panics the kernel */
}
#else
static void print_plan(const char *raw, size_t len, const char *shell) {
    static char arena[2 * MAX_CMDLINE + 2];
    static struct cmdline cl;
    static struct plan plan;
    make_plan(raw, len, shell, &plan, &cl, arena);
    if (plan.why_python != NULL) {
        printf("python\n");
        return;
    }
    printf("native\nnonce=%s\necho=%d\nstore=%d\n", plan.nonce, plan.echo, plan.store_needed);
    if (plan.test_store != NULL)
        printf("mount=bind:%s\nmount=remount:none\n", plan.test_store);
    else
        printf("mount=virtiofs:%s\n", plan.tag);
    for (int i = 0; plan.argv[i] != NULL; i++)
        printf("argv=%s\n", plan.argv[i]);
}

/* The parity test's build (tests/guest/test_native.py). --plan: for each record of
 * stdin (the shell find_shell() answers, "-" for none, NUL, a command line, NUL) the
 * plan, one field a line, then "end"; --errno: describe() of every errno; --repr S:
 * py_repr(S). */
int main(int argc, char **argv) {
    static char input[1 << 22];
    if (argc > 1 && strcmp(argv[1], "--errno") == 0) {
        for (int i = 1; i < 134; i++) {
            char why[512];
            describe(why, sizeof why, i, "");
            printf("%d %s\n", i, why);
        }
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "--repr") == 0) {
        char out[1024];
        py_repr(out, sizeof out, argv[2]);
        printf("%s\n", out);
        return 0;
    }
    if (argc < 2 || strcmp(argv[1], "--plan") != 0)
        return 2;
    size_t len = fread(input, 1, sizeof input, stdin);
    for (size_t pos = 0; pos < len;) {
        const char *shell = input + pos;
        pos += strlen(shell) + 1;
        if (pos >= len)
            return 2;
        const char *raw = input + pos;
        size_t raw_len = strlen(raw);
        pos += raw_len + 1;
        print_plan(raw, raw_len, strcmp(shell, "-") == 0 ? NULL : shell);
        printf("end\n");
    }
    return 0;
}
#endif
