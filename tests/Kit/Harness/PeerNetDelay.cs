using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Weft.Harness;

/// <summary>
/// `weft-kit app netdelay --queue N --delay-ms D [--reorder-percent P] [--reorder-extra-ms E]`: what
/// `tc netem delay D reorder` does, for kernels built without sch_netem. Packets that an iptables NFQUEUE
/// rule hands to queue N (libnetfilter_queue, metadata only) are given back to the kernel D ms later; P %
/// of them E ms later still, so the packets queued after them overtake them. One thread, no locks: the
/// verdicts are issued from the loop that reads the queue. On SIGTERM every held packet is accepted, and
/// one JSON line says how many were delayed and reordered.
/// </summary>
internal static class PeerNetDelay
{
    private const string Library = "libnetfilter_queue.so.1";
    private const byte CopyMeta = 1; // NFQNL_COPY_META: the kernel sends no payload
    private const uint Accept = 1; // NF_ACCEPT
    private const uint FailOpen = 1; // NFQA_CFG_F_FAIL_OPEN: a full queue lets packets through instead of dropping them
    private const int SolSocket = 1;
    private const int SoRcvBufForce = 33;

    // The packets the callback has seen, by when to give them back; only the loop's thread touches it.
    private static readonly PriorityQueue<uint, long> Held = new();
    private static long _delayTicks;
    private static long _extraTicks;
    private static int _reorderPercent;
    private static long _seen;
    private static long _reordered;

    public static async Task<int> RunAsync(PeerArguments options, Action<string> emit, CancellationToken cancellationToken)
    {
        var queue = (ushort)options.Number("queue", 0);
        _delayTicks = options.Number("delay-ms", 50) * Stopwatch.Frequency / 1000;
        _extraTicks = options.Number("reorder-extra-ms", 10) * Stopwatch.Frequency / 1000;
        _reorderPercent = (int)Math.Min(100, options.Number("reorder-percent", 0));
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var failure = (Exception?)null;
        var thread = new Thread(() =>
        {
            try
            {
                Loop(queue, emit, cancellationToken);
            }
            catch (Exception e)
            {
                failure = e;
            }

            done.SetResult();
        })
        { IsBackground = true, Name = "netdelay" };
        thread.Start();
        await done.Task.ConfigureAwait(false);
        if (failure is not null)
        {
            await Console.Error.WriteLineAsync($"weft-kit app netdelay: {failure.Message}").ConfigureAwait(false);
            return 1;
        }

        return 0;
    }

    private static unsafe void Loop(ushort queue, Action<string> emit, CancellationToken cancellationToken)
    {
        var handle = nfq_open();
        if (handle == IntPtr.Zero)
        {
            throw new InvalidOperationException($"nfq_open failed (errno {Marshal.GetLastPInvokeError()}): needs root and CONFIG_NETFILTER_NETLINK_QUEUE");
        }

        IntPtr queueHandle = IntPtr.Zero;
        try
        {
            queueHandle = nfq_create_queue(handle, queue, &OnPacket, IntPtr.Zero);
            if (queueHandle == IntPtr.Zero)
            {
                throw new InvalidOperationException($"nfq_create_queue {queue} failed (errno {Marshal.GetLastPInvokeError()}): is another program bound to it?");
            }

            Check(nfq_set_mode(queueHandle, CopyMeta, 0), "nfq_set_mode");
            Check(nfq_set_queue_maxlen(queueHandle, 100_000), "nfq_set_queue_maxlen");
            Check(nfq_set_queue_flags(queueHandle, FailOpen, FailOpen), "nfq_set_queue_flags");
            var fd = nfq_fd(handle);
            var bufferBytes = 32 * 1024 * 1024;
            Check(setsockopt(fd, SolSocket, SoRcvBufForce, &bufferBytes, sizeof(int)), "setsockopt SO_RCVBUFFORCE");
            emit(PeerApp.Line(new { @event = "queueing", queue, delay_ms = _delayTicks * 1000 / Stopwatch.Frequency, reorder_percent = _reorderPercent }));

            var buffer = new byte[256 * 1024];
            var fds = stackalloc PollFd[1];
            long overflows = 0;
            while (!cancellationToken.IsCancellationRequested)
            {
                var now = Stopwatch.GetTimestamp();
                var wait = Held.TryPeek(out _, out var due) ? Math.Max(0, (due - now) * 1000 / Stopwatch.Frequency) : 100;
                fds[0] = new PollFd { Fd = fd, Events = 1 /* POLLIN */ };
                if (poll(fds, 1, (int)Math.Min(wait, 100)) > 0)
                {
                    fixed (byte* data = buffer)
                    {
                        while (true)
                        {
                            var n = (int)recv(fd, data, buffer.Length, 0x40 /* MSG_DONTWAIT */);
                            if (n <= 0)
                            {
                                // EAGAIN: read all there was; ENOBUFS: the kernel dropped messages (fail-open let their packets through)
                                overflows += n < 0 && Marshal.GetLastPInvokeError() == 105 ? 1 : 0;
                                break;
                            }

                            nfq_handle_packet(handle, data, n);
                        }
                    }
                }

                Release(queueHandle, Stopwatch.GetTimestamp());
            }

            Release(queueHandle, long.MaxValue);
            emit(PeerApp.Line(new { @event = "done", packets = _seen, reordered = _reordered, overflows }));
        }
        finally
        {
            if (queueHandle != IntPtr.Zero)
            {
                nfq_destroy_queue(queueHandle);
            }

            nfq_close(handle);
        }
    }

    private static unsafe void Release(IntPtr queueHandle, long until)
    {
        while (Held.TryPeek(out var id, out var due) && due <= until)
        {
            Held.Dequeue();
            nfq_set_verdict(queueHandle, id, Accept, 0, null);
        }
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static unsafe int OnPacket(IntPtr queueHandle, IntPtr message, IntPtr data, IntPtr context)
    {
        var header = nfq_get_msg_packet_hdr(data);
        if (header == null)
        {
            return 0;
        }

        var id = BinaryPrimitives.ReverseEndianness(*(uint*)header); // packet_id, big-endian
        var due = Stopwatch.GetTimestamp() + _delayTicks;
        _seen++;
        if (_reorderPercent > 0 && Random.Shared.Next(100) < _reorderPercent)
        {
            due += _extraTicks;
            _reordered++;
        }

        Held.Enqueue(id, due);
        return 0;
    }

    private static void Check(int result, string call)
    {
        if (result < 0)
        {
            throw new InvalidOperationException($"{call} failed (errno {Marshal.GetLastPInvokeError()})");
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [DllImport(Library, SetLastError = true)]
    private static extern IntPtr nfq_open();

    [DllImport(Library)]
    private static extern int nfq_close(IntPtr handle);

    [DllImport(Library, SetLastError = true)]
    private static extern unsafe IntPtr nfq_create_queue(IntPtr handle, ushort number, delegate* unmanaged[Cdecl]<IntPtr, IntPtr, IntPtr, IntPtr, int> callback, IntPtr data);

    [DllImport(Library)]
    private static extern int nfq_destroy_queue(IntPtr queueHandle);

    [DllImport(Library, SetLastError = true)]
    private static extern int nfq_set_mode(IntPtr queueHandle, byte mode, uint range);

    [DllImport(Library, SetLastError = true)]
    private static extern int nfq_set_queue_maxlen(IntPtr queueHandle, uint length);

    [DllImport(Library, SetLastError = true)]
    private static extern int nfq_set_queue_flags(IntPtr queueHandle, uint mask, uint flags);

    [DllImport(Library)]
    private static extern int nfq_fd(IntPtr handle);

    [DllImport(Library)]
    private static extern unsafe int nfq_handle_packet(IntPtr handle, byte* buffer, int length);

    [DllImport(Library)]
    private static extern unsafe byte* nfq_get_msg_packet_hdr(IntPtr data);

    [DllImport(Library)]
    private static extern unsafe int nfq_set_verdict(IntPtr queueHandle, uint id, uint verdict, uint length, byte* buffer);

    [DllImport("libc", SetLastError = true)]
    private static extern unsafe int setsockopt(int fd, int level, int name, void* value, int length);

    [DllImport("libc", SetLastError = true)]
    private static extern unsafe int poll(PollFd* fds, nuint count, int timeoutMs);

    [DllImport("libc", SetLastError = true)]
    private static extern unsafe nint recv(int fd, byte* buffer, nint length, int flags);
}
