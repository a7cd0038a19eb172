using System.Buffers;

namespace Weft;

/// <summary>
/// The agent's 64 KiB data buffers: a relay's burst, a tunnel's read-ahead, and the segments of a tunnel's HTTP/2
/// reader and writer (as a <see cref="MemoryPool{T}"/>). Each is held only while bytes are on their way and comes
/// back here when they have gone; at most <see cref="MaxIdle"/> wait for the next burst, the rest are left to the GC.
/// <para>
/// Pooled here rather than in <see cref="ArrayPool{T}.Shared"/> so that the heap trim can hand them back
/// (<see cref="Trim"/>). The shared pool keeps up to 32 arrays of a size per core and lets them go only over gen2
/// collections, a few at a time, which an idle agent does not have: after a burst of 4,000 connections each agent
/// still held 64 of them, 4 MiB of its 6 MiB above the idle figure (docs/benchmark.md).
/// </para>
/// </summary>
internal sealed class DataBuffers : MemoryPool<byte>
{
    /// <summary>Every buffer's length.</summary>
    public const int Size = 64 * 1024;

    private readonly byte[]?[] _idle;
    private readonly Lock _gate = new();
    private int _count;

    /// <param name="maxIdle">Buffers kept for the next burst at most.</param>
    public DataBuffers(int maxIdle)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxIdle);
        _idle = new byte[maxIdle][];
    }

    /// <summary>The agent's pool: as many idle buffers per core as the shared pool kept.</summary>
    public static DataBuffers Default { get; } = new(32 * Environment.ProcessorCount);

    /// <summary>Buffers kept for the next burst at most.</summary>
    public int MaxIdle => _idle.Length;

    /// <summary>Buffers waiting for the next burst now.</summary>
    public int Idle => Volatile.Read(ref _count);

    public override int MaxBufferSize => Size;

    /// <summary>A buffer of <see cref="Size"/> bytes, kept or new; its contents are whatever its last user left.</summary>
    public byte[] Rent()
    {
        lock (_gate)
        {
            if (_count > 0)
            {
                var buffer = _idle[--_count]!;
                _idle[_count] = null;
                return buffer;
            }
        }

        return GC.AllocateUninitializedArray<byte>(Size);
    }

    /// <summary>Takes a buffer back; one of another length (not this pool's), or one past <see cref="MaxIdle"/>, is left to the GC.</summary>
    public void Return(byte[] buffer)
    {
        if (buffer.Length != Size)
        {
            return;
        }

        lock (_gate)
        {
            if (_count < _idle.Length)
            {
                _idle[_count++] = buffer;
            }
        }
    }

    /// <summary>Lets every idle buffer go (the next collection frees them); returns how many.</summary>
    public int Trim()
    {
        lock (_gate)
        {
            var count = _count;
            Array.Clear(_idle, 0, count);
            _count = 0;
            return count;
        }
    }

    /// <summary>A pipe's segment: a buffer of this pool, or a one-off for a larger ask (pipes here never ask for more).</summary>
    public override IMemoryOwner<byte> Rent(int minBufferSize = -1) =>
        new Lease(this, minBufferSize > Size ? GC.AllocateUninitializedArray<byte>(minBufferSize) : Rent());

    protected override void Dispose(bool disposing)
    {
    }

    private sealed class Lease(DataBuffers pool, byte[] buffer) : IMemoryOwner<byte>
    {
        private byte[]? _buffer = buffer;

        public Memory<byte> Memory => _buffer ?? throw new ObjectDisposedException(nameof(DataBuffers));

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _buffer, null) is { } held)
            {
                pool.Return(held);
            }
        }
    }
}
