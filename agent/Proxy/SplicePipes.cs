using System.Net.Sockets;
using Tmds.Linux;

namespace Weft.Proxy;

/// <summary>
/// A kernel pipe that a plaintext relay splices through: splice(2) moves a socket's received pages into the pipe and
/// from the pipe into the other socket, so the bytes never cross into the agent's memory (no recv copy, no send copy).
/// A relay holds one only while bytes are on their way: for one burst, or while the other socket is full.
/// </summary>
internal sealed class SplicePipe
{
    private SplicePipe(int read, int write)
    {
        Read = read;
        Write = write;
    }

    /// <summary>The pipe's read end (splice from it into the destination socket).</summary>
    public int Read { get; }

    /// <summary>The pipe's write end (splice into it from the source socket).</summary>
    public int Write { get; }

    /// <summary>A new non-blocking, close-on-exec pipe; null when the agent is out of descriptors (or pipes).</summary>
    public static unsafe SplicePipe? Create()
    {
        int* fds = stackalloc int[2];
        if (LibC.pipe2(fds, LibC.O_NONBLOCK | LibC.O_CLOEXEC) != 0)
        {
            return null;
        }

        // Room for a whole burst: one splice moves what the socket holds, up to this, instead of 16 pages at a time.
        LibC.fcntl(fds[1], LibC.F_SETPIPE_SZ, Capacity);
        return new SplicePipe(fds[0], fds[1]);
    }

    /// <summary>What one pipe holds (F_SETPIPE_SZ; the kernel's default is 16 pages), and so what one splice moves at most.</summary>
    public const int Capacity = 256 * 1024;

    public void Close()
    {
        LibC.close(Read);
        LibC.close(Write);
    }
}

/// <summary>
/// The relays' pipes. Empty ones are kept for the next burst, so a busy relay does not make and close a pipe (two
/// descriptors) per burst; past <see cref="MaxIdle"/> a returned pipe is closed, and one that still holds bytes (its
/// relay was reset meanwhile) is closed too.
/// <para>
/// A relay whose destination does not read keeps its pipe, so peers decide how many pipes are held: at most
/// <see cref="MaxInUse"/> (an eighth of the descriptor limit in pipes' two descriptors each, at most 1,024: a full pipe
/// holds <see cref="SplicePipe.Capacity"/> of kernel pages, so 256 MiB at most). Past it, and
/// when the agent is out of descriptors, a burst copies through a buffer instead (<see cref="Unavailable"/>,
/// <c>weft_relay_splice_unavailable_total</c>): slower, never refused.
/// </para>
/// </summary>
internal static class SplicePipes
{
    /// <summary>Idle pipes kept at most (two descriptors each).</summary>
    public const int MaxIdle = 64;

    private static readonly Stack<SplicePipe> Idle = new();
    private static readonly Lock Gate = new();
    private static long _spliced;
    private static long _unavailable;
    private static int _inUse;

    /// <summary>Pipes held by relays at most; the rest of the bursts copy. The agent sets it from its descriptor limit (<see cref="LimitFor"/>).</summary>
    public static int MaxInUse { get; set; } = LimitFor(4096);

    /// <summary>Pipes held by relays now (bursts under way, and relays waiting for room in a destination).</summary>
    public static int InUse => Volatile.Read(ref _inUse);

    /// <summary>The pipes a process with <paramref name="descriptors"/> may open lets relays hold: an eighth of them (two each), at most 1,024.</summary>
    public static int LimitFor(long descriptors) => (int)Math.Clamp(descriptors / 16, 4, 1024);

    /// <summary>Bytes relayed by splice(2) since the agent started (the rest went through a buffer).</summary>
    public static long SplicedBytes => Interlocked.Read(ref _spliced);

    /// <summary>Bursts that found no pipe to be had (the limit reached, or out of descriptors) and copied through a buffer instead.</summary>
    public static long Unavailable => Interlocked.Read(ref _unavailable);

    internal static void Count(int bytes) => Interlocked.Add(ref _spliced, bytes);

    /// <summary>An empty pipe, or null when none can be made now (the caller copies through a buffer instead).</summary>
    public static SplicePipe? Rent()
    {
        if (Interlocked.Increment(ref _inUse) > MaxInUse)
        {
            Interlocked.Decrement(ref _inUse);
            Interlocked.Increment(ref _unavailable);
            return null;
        }

        lock (Gate)
        {
            if (Idle.TryPop(out var pipe))
            {
                return pipe;
            }
        }

        var made = SplicePipe.Create();
        if (made is null)
        {
            Interlocked.Decrement(ref _inUse);
            Interlocked.Increment(ref _unavailable);
        }

        return made;
    }

    /// <summary>Takes back <paramref name="pipe"/>: kept when <paramref name="empty"/> and there is room, else closed.</summary>
    public static void Return(SplicePipe pipe, bool empty)
    {
        Interlocked.Decrement(ref _inUse);
        if (empty)
        {
            lock (Gate)
            {
                if (Idle.Count < MaxIdle)
                {
                    Idle.Push(pipe);
                    return;
                }
            }
        }

        pipe.Close();
    }

    /// <summary>
    /// Sets O_NONBLOCK on <paramref name="socket"/>'s descriptor when it is not set yet (a closed socket is left alone:
    /// the relay's first read sees it). Not <c>Socket.Blocking = false</c>: that makes the socket's .NET async context
    /// (152 bytes a socket) just to set the flag.
    /// </summary>
    public static unsafe void MakeNonBlocking(Socket socket)
    {
        try
        {
            RelayPumps.Call(socket, 0, &SetNonBlocking);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    private static long SetNonBlocking(int fd, int none)
    {
        var flags = LibC.fcntl(fd, LibC.F_GETFL, 0);
        return flags < 0 || (flags & LibC.O_NONBLOCK) != 0 ? flags : LibC.fcntl(fd, LibC.F_SETFL, flags | LibC.O_NONBLOCK);
    }

    /// <summary>
    /// splice(2) without waiting, at most <paramref name="length"/> bytes from <paramref name="socket"/> into
    /// <paramref name="pipe"/> (<paramref name="fromSocket"/>) or from the pipe into the socket, whose descriptor is held
    /// meanwhile. Returns the bytes moved, 0 at the socket's end of stream, -1 when the source is empty or the
    /// destination full. Throws <see cref="SocketException"/> when the socket's peer is gone,
    /// <see cref="ObjectDisposedException"/> when the socket was closed.
    /// </summary>
    public static unsafe int Splice(Socket socket, bool fromSocket, SplicePipe pipe, int length) =>
        RelayPumps.Call(socket, (fromSocket ? pipe.Write : pipe.Read, length), fromSocket ? &FromSocket : &ToSocket);

    private static unsafe long FromSocket(int fd, (int Pipe, int Length) to) =>
        (long)LibC.splice(fd, null, to.Pipe, null, to.Length, (uint)(LibC.SPLICE_F_MOVE | LibC.SPLICE_F_NONBLOCK));

    private static unsafe long ToSocket(int fd, (int Pipe, int Length) from) =>
        (long)LibC.splice(from.Pipe, null, fd, null, from.Length, (uint)(LibC.SPLICE_F_MOVE | LibC.SPLICE_F_NONBLOCK));
}
