using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using System.Text;
using Tmds.Linux;
using Weft.Capture.Internal;

namespace Weft.Capture;

/// <summary>
/// Runs code inside a network namespace. Each namespace path gets one long-lived dedicated thread
/// that <c>setns()</c>'d into it once and never leaves; sockets made there stay in that namespace
/// and can be used from any thread afterwards.
/// <code>
/// caller ──Run(path, f)──► queue ──► [thread in pod netns] f() ──► result back to caller
/// </code>
/// </summary>
internal static class NetNamespace
{
    private const int SolSocket = 1;
    private const int SoNetnsCookie = 71;

    private static readonly ConcurrentDictionary<string, NamespaceThread> Threads = new(StringComparer.Ordinal);

    /// <summary>Runs <paramref name="action"/> on the namespace's thread and returns its result.</summary>
    public static T Run<T>(string netnsPath, Func<T> action)
    {
        ArgumentNullException.ThrowIfNull(action);
        while (true)
        {
            var thread = Threads.GetOrAdd(netnsPath, static p => new NamespaceThread(p));
            if (thread.IsCurrent)
            {
                return action();
            }
            if (thread.TryRun(action, out var result))
            {
                return result;
            }
            // the thread failed to enter the namespace or was released: forget it, and retry once
            // with a new thread so a recreated namespace at the same path works
            Threads.TryRemove(new KeyValuePair<string, NamespaceThread>(netnsPath, thread));
            if (thread.EnterError is { } error)
            {
                throw error;
            }
        }
    }

    /// <summary>Runs <paramref name="action"/> on the namespace's thread.</summary>
    public static void Run(string netnsPath, Action action) =>
        Run(netnsPath, () =>
        {
            action();
            return true;
        });

    /// <summary>
    /// Ends the namespace's thread. Call it when the namespace goes away: the thread holds a
    /// reference that keeps a deleted namespace alive.
    /// </summary>
    public static void Release(string netnsPath)
    {
        if (Threads.TryRemove(netnsPath, out var thread))
        {
            thread.Stop();
        }
    }

    /// <summary>The cookie of the namespace a socket was made in: getsockopt(SOL_SOCKET, SO_NETNS_COOKIE).</summary>
    public static ulong GetCookie(Socket socket)
    {
        Span<byte> value = stackalloc byte[sizeof(ulong)];
        var length = socket.GetRawSocketOption(SolSocket, SoNetnsCookie, value);
        if (length != sizeof(ulong))
        {
            throw new CaptureException($"SO_NETNS_COOKIE returned {length} bytes; the kernel needs to be 5.14 or newer");
        }
        return MemoryMarshal.Read<ulong>(value);
    }

    /// <summary>The cookie of the namespace at <paramref name="netnsPath"/> (the same value BPF sees).</summary>
    public static ulong GetCookie(string netnsPath) =>
        Run(netnsPath, static () =>
        {
            using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            return GetCookie(probe);
        });

    private sealed class NamespaceThread
    {
        // Each item is told whether the thread got into the namespace (null) or why not.
        private readonly BlockingCollection<Action<CaptureException?>> _work = new();
        private readonly Thread _thread;
        private readonly ManualResetEventSlim _entered = new();

        public NamespaceThread(string netnsPath)
        {
            _thread = new Thread(() => Loop(netnsPath))
            {
                IsBackground = true,
                Name = "netns " + Path.GetFileName(netnsPath),
            };
            _thread.Start();
            _entered.Wait();
        }

        public CaptureException? EnterError { get; private set; }

        public bool IsCurrent => Thread.CurrentThread == _thread;

        public bool TryRun<T>(Func<T> action, out T result)
        {
            result = default!;
            if (EnterError is not null)
            {
                return false;
            }
            T value = default!;
            ExceptionDispatchInfo? failure = null;
            using var done = new ManualResetEventSlim();
            try
            {
                _work.Add(enterError =>
                {
                    try
                    {
                        if (enterError is not null)
                        {
                            throw enterError;
                        }

                        value = action();
                    }
                    catch (Exception e)
                    {
                        failure = ExceptionDispatchInfo.Capture(e);
                    }
                    finally
                    {
                        done.Set();
                    }
                });
            }
            catch (InvalidOperationException)
            {
                return false; // released meanwhile
            }
            done.Wait();
            failure?.Throw();
            result = value;
            return true;
        }

        public void Stop() => _work.CompleteAdding();

        private unsafe void Loop(string netnsPath)
        {
            int podFd = -1, homeFd = -1;
            try
            {
                // The agent's own namespace, to come back to after each piece of work.
                fixed (byte* home = "/proc/thread-self/ns/net\0"u8)
                {
                    homeFd = LibC.open(home, LibC.O_RDONLY | LibC.O_CLOEXEC, 0);
                }

                fixed (byte* path = Encoding.UTF8.GetBytes(netnsPath + "\0"))
                {
                    podFd = LibC.open(path, LibC.O_RDONLY | LibC.O_CLOEXEC, 0);
                }
                if (podFd < 0 || homeFd < 0)
                {
                    var errno = LibC.errno;
                    EnterError = new CaptureException(
                        $"cannot open network namespace {netnsPath} ({Mounts.Describe(errno)}); is the pod's netns path right?", errno);
                }
                else
                {
                    // Try once now, so a namespace we may not enter fails at enrollment with a clear message.
                    EnterError = Enter(podFd, netnsPath) ?? Enter(homeFd, "the agent's own namespace");
                }

                if (EnterError is not null)
                {
                    Close(podFd, homeFd);
                    return;
                }

            }
            finally
            {
                _entered.Set();
            }

            try
            {
                // Each piece of work runs inside the pod's namespace, and the thread returns to the agent's
                // own between pieces: a thread the runtime creates from this one (a thread-pool worker, say)
                // inherits the creator's namespace, and must never inherit a pod's.
                foreach (var item in _work.GetConsumingEnumerable())
                {
                    if (Enter(podFd, netnsPath) is { } error)
                    {
                        // Never run the work outside the pod: it would make its sockets in the wrong namespace.
                        item(error);
                        continue;
                    }

                    try
                    {
                        item(null);
                    }
                    finally
                    {
                        if (Enter(homeFd, "the agent's own namespace") is { } back)
                        {
                            // Stuck in the pod's namespace: stop serving rather than run anything else here.
                            EnterError = back;
                            _work.CompleteAdding();
                        }
                    }
                }
            }
            finally
            {
                Close(podFd, homeFd);
            }
        }

        private static void Close(params int[] fds)
        {
            foreach (var fd in fds)
            {
                if (fd >= 0)
                {
                    LibC.close(fd);
                }
            }
        }

        private static CaptureException? Enter(int fd, string what)
        {
            if (LibC.setns(fd, LibC.CLONE_NEWNET) == 0)
            {
                return null;
            }

            var errno = LibC.errno;
            return new CaptureException($"setns into {what} failed ({Mounts.Describe(errno)}); the agent needs CAP_SYS_ADMIN", errno);
        }
    }
}
