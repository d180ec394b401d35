/* One background thread that runs a job when kicked, for the record store's write-behind:
 * the gateway reassembles the next batch while this writes the last one. The job is plain C
 * (no Python), so the thread never takes the GIL. */
#ifndef FLOWSIFT_WRITER_H
#define FLOWSIFT_WRITER_H
#include <pthread.h>
#include <unistd.h>

typedef struct {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state;                  /* 0 idle, 1 a job to run, 2 stop */
    int started;
    pid_t owner;                /* a forked child has no such thread: it never waits for it */
    void (*job)(void *);
    void *arg;
} fs_bg_t;

static void *fs_bg_main(void *p)
{
    fs_bg_t *bg = (fs_bg_t *)p;
    pthread_mutex_lock(&bg->mu);
    for (;;) {
        while (bg->state == 0)
            pthread_cond_wait(&bg->cv, &bg->mu);
        if (bg->state == 2)
            break;
        pthread_mutex_unlock(&bg->mu);
        bg->job(bg->arg);
        pthread_mutex_lock(&bg->mu);
        bg->state = 0;
        pthread_cond_broadcast(&bg->cv);
    }
    pthread_mutex_unlock(&bg->mu);
    return NULL;
}

/* 0, or an errno value */
static int fs_bg_start(fs_bg_t *bg, void (*job)(void *), void *arg)
{
    int err;
    if (bg->started && bg->owner == getpid())
        return 0;
    bg->started = 0;
    pthread_mutex_init(&bg->mu, NULL);
    pthread_cond_init(&bg->cv, NULL);
    bg->state = 0;
    bg->job = job;
    bg->arg = arg;
    err = pthread_create(&bg->thread, NULL, fs_bg_main, bg);
    if (err) {
        pthread_cond_destroy(&bg->cv);
        pthread_mutex_destroy(&bg->mu);
        return err;
    }
    bg->started = 1;
    bg->owner = getpid();
    return 0;
}

/* until the job running (if any) is done */
static void fs_bg_wait(fs_bg_t *bg)
{
    if (!bg->started || bg->owner != getpid())
        return;
    pthread_mutex_lock(&bg->mu);
    while (bg->state == 1)
        pthread_cond_wait(&bg->cv, &bg->mu);
    pthread_mutex_unlock(&bg->mu);
}

/* is the job still running? */
static int fs_bg_running(fs_bg_t *bg)
{
    int running;
    if (!bg->started || bg->owner != getpid())
        return 0;
    pthread_mutex_lock(&bg->mu);
    running = bg->state == 1;
    pthread_mutex_unlock(&bg->mu);
    return running;
}

/* run the job once more (the previous run is done: call fs_bg_wait first) */
static void fs_bg_kick(fs_bg_t *bg)
{
    pthread_mutex_lock(&bg->mu);
    bg->state = 1;
    pthread_cond_broadcast(&bg->cv);
    pthread_mutex_unlock(&bg->mu);
}

static void fs_bg_stop(fs_bg_t *bg)
{
    if (!bg->started)
        return;
    if (bg->owner != getpid()) {
        bg->started = 0;        /* the thread is the parent's */
        return;
    }
    fs_bg_wait(bg);
    pthread_mutex_lock(&bg->mu);
    bg->state = 2;
    pthread_cond_broadcast(&bg->cv);
    pthread_mutex_unlock(&bg->mu);
    pthread_join(bg->thread, NULL);
    pthread_cond_destroy(&bg->cv);
    pthread_mutex_destroy(&bg->mu);
    bg->started = 0;
}

/* Sharing a job's work with the thread that waits for it (the job is plain C too). The job
 * sets *open (through fs_bg_open_share) once part of its work may be taken by the waiter, and
 * counts what the waiter finished in *done; fs_bg_notify wakes whoever waits on either. */
static void fs_bg_notify(fs_bg_t *bg)
{
    pthread_mutex_lock(&bg->mu);
    pthread_cond_broadcast(&bg->cv);
    pthread_mutex_unlock(&bg->mu);
}

/* (a waiter that saw *open still 0 is waiting on the condition by the time the broadcast
 * takes the mutex: no wake-up is lost) */
static void fs_bg_open_share(fs_bg_t *bg, volatile int *open)
{
    __atomic_store_n(open, 1, __ATOMIC_RELEASE);
    fs_bg_notify(bg);
}

/* the waiter: 1 once the running job shares its work, 0 if it ends first (or none runs) */
static int fs_bg_await_share(fs_bg_t *bg, volatile int *open)
{
    int shared;
    if (!bg->started || bg->owner != getpid())
        return 0;
    pthread_mutex_lock(&bg->mu);
    while (bg->state == 1 && !__atomic_load_n(open, __ATOMIC_ACQUIRE))
        pthread_cond_wait(&bg->cv, &bg->mu);
    shared = bg->state == 1;
    pthread_mutex_unlock(&bg->mu);
    return shared;
}

/* the job: until *done reaches n (the waiter finished what it took) */
static void fs_bg_await_count(fs_bg_t *bg, volatile int *done, int n)
{
    pthread_mutex_lock(&bg->mu);
    while (__atomic_load_n(done, __ATOMIC_ACQUIRE) < n)
        pthread_cond_wait(&bg->cv, &bg->mu);
    pthread_mutex_unlock(&bg->mu);
}
#endif
