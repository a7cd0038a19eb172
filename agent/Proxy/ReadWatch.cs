using System.Net.Sockets;
using System.Runtime.InteropServices;
using Tmds.Linux;

namespace Weft.Proxy;

/// <summary>Run on the thread pool once a watched socket has bytes, an end or an error to read (or, in <see cref="ReadWatch.Writable"/>, room to send).</summary>
internal interface IReadReady : IThreadPoolWorkItem;

/// <summary>
/// A readiness whose work is a short burst that never blocks the thread: run on the watch's own thread, in the turn
/// that saw the event, instead of one thread-pool hop later. An await that has to wait is fine (the work goes on
/// wherever it completes, and the watch thread returns to its loop); a blocking call, a lock another thread holds for
/// long, or a burst without a bound is not: every other socket of the watch waits while it runs. Such work must stay
/// an <see cref="IReadReady"/>.
/// </summary>
internal interface IRunOnWatch : IReadReady;

/// <summary>
/// One epoll instance and the threads waiting on it: tells an idle relay when its socket has something to
/// read. A relay that waits this way holds no pending .NET receive while idle. A pending
/// <c>Socket.ReceiveAsync</c>, even a zero-byte one, keeps about 640 bytes per socket alive: the socket's
/// cached event args, its queued receive operation, its callback and its async context (heap dumps in
/// docs/benchmark.md). Here a registration costs one array slot; the relay's own object is the callback.
/// <para>
/// A registration fires once (EPOLLONESHOT, level-triggered): the relay reads until the socket is empty
/// and then re-arms it, so bytes that arrive between its last read and the re-arm fire at once. Ids carry a
/// generation, so an event that was already on its way when its registration was removed (and the slot
/// reused) is dropped, not delivered to the next relay in that slot.
/// </para>
/// <para>
/// A second instance, <see cref="Writable"/>, waits the same way for room to send: a splicing relay whose
/// destination is full waits there with its bytes in a pipe, not in a thread or a pending .NET send.
/// </para>
/// <para>
/// An <see cref="IRunOnWatch"/> target runs on the watch thread that took its event: a plaintext burst is a few
/// splices, and the hop to the thread pool cost more than the burst (docs/benchmark.md, "A burst on the watch's
/// thread"). <see cref="Shared"/> has one shard per core, up to four: an epoll set and the one thread that waits on
/// it. A registration belongs to one shard, and sockets whose events follow one another go to the same one: both
/// sockets of a plaintext relay, and a tunnel's socket with the sockets of the streams it carries. The answer to a
/// request a thread sent on then comes back as a readiness of its own shard, taken by the same thread, where threads
/// sharing one epoll set took it on another thread about as often as not, with more context switches per round trip
/// and a slower one (docs/benchmark.md, "One thread per shard"). Unrelated connections spread over the shards, so
/// busy moments still use every core.
/// </para>
/// </summary>
internal sealed unsafe class ReadWatch
{
    private static readonly Lazy<ReadWatch> Instance = new(() => new ReadWatch(LibC.EPOLLIN | LibC.EPOLLRDHUP | LibC.EPOLLONESHOT, "weft-readwatch", Math.Clamp(Environment.ProcessorCount, 1, MaxShards)));
    private static readonly Lazy<ReadWatch> WritableInstance = new(() => new ReadWatch(LibC.EPOLLOUT | LibC.EPOLLONESHOT, "weft-writewatch", 1));

    /// <summary>The agent's watcher of bytes to read; its threads start with the first use.</summary>
    public static ReadWatch Shared => Instance.Value;

    /// <summary>The agent's watcher of room to send (EPOLLOUT; errors and hang-ups fire it too).</summary>
    public static ReadWatch Writable => WritableInstance.Value;

    [ThreadStatic]
    private static bool _onWatchThread;

    /// <summary>True on a watch's own thread (where an <see cref="IRunOnWatch"/> target runs).</summary>
    public static bool OnWatchThread => _onWatchThread;

    /// <summary>Events one thread takes a turn.</summary>
    private const int MaxEvents = 16;

    /// <summary>An id: its generation (high 32 bits), its shard (<see cref="ShardBits"/>) and its slot (the rest).</summary>
    private const int ShardBits = 2, SlotBits = 32 - ShardBits;
    private const int MaxShards = 1 << ShardBits;
    private const uint SlotMask = (1u << SlotBits) - 1;

    private readonly int[] _epolls;
    private int _nextShard;
    private readonly int _events;
    private readonly Lock _lock = new();
    private IReadReady?[] _targets = new IReadReady?[1024];     // under _lock
    private uint[] _generations = new uint[1024];                // under _lock
    private readonly Stack<int> _free = new();                   // under _lock
    private int _used;                                           // under _lock: slots ever handed out
    private int _count;

    private ReadWatch(int events, string thread, int shards)
    {
        _events = events;
        _epolls = new int[shards];
        for (var i = 0; i < shards; i++)
        {
            _epolls[i] = LibC.epoll_create1(LibC.EPOLL_CLOEXEC);
            if (_epolls[i] < 0)
            {
                throw new SocketException((int)SocketError.SocketError, $"epoll_create1 failed: errno {LibC.errno}");
            }

            var shard = i;
            new Thread(() => Loop(shard)) { IsBackground = true, Name = thread }.Start();
        }
    }

    /// <summary>The shards' epoll descriptors (tests look their watched sockets up in /proc/self/fdinfo).</summary>
    internal IReadOnlyList<int> Descriptors => _epolls;

    /// <summary>A shard for a socket that has no related one here yet: the shards in turn.</summary>
    public int NextShard() => (int)((uint)Interlocked.Increment(ref _nextShard) % (uint)_epolls.Length);

    /// <summary>Registrations held now (one per idle or active relay direction that waits here).</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>
    /// Reserves a registration for <paramref name="target"/> in <paramref name="shard"/> (one of
    /// <see cref="NextShard"/>'s, or that of a related registration: <see cref="ShardOf"/>; out of range, the next one);
    /// the socket is watched from <see cref="Arm"/>.
    /// </summary>
    public long Register(IReadReady target, int shard = -1)
    {
        if ((uint)shard >= (uint)_epolls.Length)
        {
            shard = NextShard();
        }

        lock (_lock)
        {
            if (!_free.TryPop(out var slot))
            {
                if (_used == SlotMask)
                {
                    throw new InvalidOperationException("the read watch has no registration left");
                }

                slot = _used++;
                if (slot == _targets.Length)
                {
                    Array.Resize(ref _targets, slot * 2);
                    Array.Resize(ref _generations, slot * 2);
                }
            }

            _targets[slot] = target;
            _count++;
            return ((long)_generations[slot] << 32) | ((uint)shard << SlotBits) | (uint)slot;
        }
    }

    /// <summary>The shard of registration <paramref name="id"/>.</summary>
    public static int ShardOf(long id) => (int)((uint)id >> SlotBits);

    /// <summary>
    /// Watches <paramref name="socket"/> for one readiness (<paramref name="first"/>: the first time for this
    /// registration). False when the socket is closed or no longer watched: nothing will fire.
    /// </summary>
    public bool Arm(Socket socket, long id, bool first = false) =>
        Control(socket, first ? LibC.EPOLL_CTL_ADD : LibC.EPOLL_CTL_MOD, id);

    /// <summary>
    /// Frees the registration; a readiness already on its way is dropped. Only for a registration that cannot fire
    /// again: disarmed (its one readiness fired and it was not armed since) or its socket closed (a reset). So no
    /// epoll_ctl: a disarmed registration reports nothing, not even an error or hang-up, and a socket leaves the epoll
    /// set when it closes (the agent never duplicates a socket's descriptor).
    /// </summary>
    public void Remove(long id)
    {
        lock (_lock)
        {
            var slot = (int)((uint)id & SlotMask);
            if (_generations[slot] != (uint)(id >> 32) || _targets[slot] is null)
            {
                return;
            }

            _targets[slot] = null;
            _generations[slot]++;
            _free.Push(slot);
            _count--;
        }
    }

    /// <summary>
    /// Takes <paramref name="socket"/> out of the epoll set, armed or not, and frees the registration: for a socket that
    /// waited here once and goes on open (a relay may add it later as its own).
    /// </summary>
    public void Leave(Socket socket, long id)
    {
        Control(socket, LibC.EPOLL_CTL_DEL, id);
        Remove(id);
    }

    private bool Control(Socket socket, int op, long id)
    {
        var handle = socket.SafeHandle;
        var added = false;
        try
        {
            // Held while epoll_ctl runs, so the descriptor cannot be closed and reused for another socket meanwhile.
            handle.DangerousAddRef(ref added);
            var ev = new epoll_event { events = _events };
            ev.data.u64 = (ulong)id;
            return LibC.epoll_ctl(_epolls[ShardOf(id)], op, (int)handle.DangerousGetHandle(), &ev) == 0;
        }
        catch (ObjectDisposedException)
        {
            return false;
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    private void Loop(int shard)
    {
        var epoll = _epolls[shard];
        _onWatchThread = true;
        var events = (epoll_event*)NativeMemory.Alloc(MaxEvents, (nuint)sizeof(epoll_event));
        var ready = new IReadReady?[MaxEvents];
        while (true)
        {
            var n = LibC.epoll_wait(epoll, events, MaxEvents, -1);
            if (n < 0)
            {
                if (LibC.errno != LibC.EINTR)
                {
                    Log.Error("proxy", $"epoll_wait failed: errno {LibC.errno}; idle relays will not wake");
                    return;
                }

                continue;
            }

            var inline = 0;
            lock (_lock)
            {
                for (var i = 0; i < n; i++)
                {
                    var id = (long)events[i].data.u64;
                    var slot = (int)((uint)id & SlotMask);
                    if (slot < _used && _generations[slot] == (uint)(id >> 32) && _targets[slot] is { } target)
                    {
                        if (target is IRunOnWatch)
                        {
                            ready[inline++] = target;
                        }
                        else
                        {
                            ThreadPool.UnsafeQueueUserWorkItem(target, preferLocal: false);
                        }
                    }
                }
            }

            for (var i = 0; i < inline; i++)
            {
                var target = ready[i]!;
                ready[i] = null;
                try
                {
                    target.Execute();
                }
                catch (Exception e)
                {
                    Log.Error("proxy", $"a relay's burst failed on the watch thread: {e}");
                }
            }
        }
    }
}
