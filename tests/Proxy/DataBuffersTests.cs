using System.IO.Pipelines;
using System.Runtime.CompilerServices;

namespace Weft.Tests.Proxy;

/// <summary>The agent's 64 KiB data buffers: reused, bounded, and let go on a trim.</summary>
public class DataBuffersTests
{
    [Fact]
    public void AReturnedBuffer_IsTheNextOneRented()
    {
        var pool = new DataBuffers(maxIdle: 4);
        var first = pool.Rent();
        Assert.Equal(DataBuffers.Size, first.Length);
        pool.Return(first);
        Assert.Equal(1, pool.Idle);

        Assert.Same(first, pool.Rent());
        Assert.Equal(0, pool.Idle);
        Assert.NotSame(first, pool.Rent());
    }

    [Fact]
    public void PastMaxIdle_AndOfAnotherLength_ReturnsAreLeftToTheGc()
    {
        var pool = new DataBuffers(maxIdle: 2);
        var rented = Enumerable.Range(0, 3).Select(_ => pool.Rent()).ToList();
        foreach (var buffer in rented)
        {
            pool.Return(buffer);
        }

        Assert.Equal(2, pool.Idle);
        pool.Trim();
        pool.Return(new byte[DataBuffers.Size - 1]);
        Assert.Equal(0, pool.Idle);
    }

    [Fact]
    public void Trim_LetsEveryIdleBufferGo()
    {
        var pool = new DataBuffers(maxIdle: 8);
        var returned = ReturnSome(pool, 5);
        Assert.Equal(5, pool.Idle);

        Assert.Equal(5, pool.Trim());
        Assert.Equal(0, pool.Idle);
        GC.Collect();
        Assert.All(returned, weak => Assert.False(weak.IsAlive));
        Assert.Equal(0, pool.Trim());
    }

    [Fact]
    public void AsAMemoryPool_ALeaseGoesBackOnce_AndALargerAskIsAOneOff()
    {
        var pool = new DataBuffers(maxIdle: 4);
        var lease = pool.Rent(-1);
        Assert.Equal(DataBuffers.Size, lease.Memory.Length);
        lease.Dispose();
        lease.Dispose();
        Assert.Equal(1, pool.Idle);
        Assert.Throws<ObjectDisposedException>(() => lease.Memory);

        using (var large = pool.Rent(DataBuffers.Size + 1))
        {
            Assert.Equal(DataBuffers.Size + 1, large.Memory.Length);
            Assert.Equal(1, pool.Idle);   // the kept one was not taken for it
        }

        Assert.Equal(1, pool.Idle);   // and the one-off is not kept
    }

    [Fact]
    public async Task APipeReadingThroughIt_GivesItsSegmentsBack()
    {
        var pool = new DataBuffers(maxIdle: 4);
        var bytes = new byte[3 * DataBuffers.Size];
        Random.Shared.NextBytes(bytes);
        var reader = PipeReader.Create(new MemoryStream(bytes), new StreamPipeReaderOptions(pool: pool, bufferSize: DataBuffers.Size));
        var read = new MemoryStream();
        while (true)
        {
            var result = await reader.ReadAsync();
            foreach (var segment in result.Buffer)
            {
                read.Write(segment.Span);
            }

            reader.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                break;
            }
        }

        await reader.CompleteAsync();
        Assert.Equal(bytes, read.ToArray());
        Assert.InRange(pool.Idle, 1, 4);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static List<WeakReference> ReturnSome(DataBuffers pool, int count)
    {
        var rented = Enumerable.Range(0, count).Select(_ => pool.Rent()).ToList();
        foreach (var buffer in rented)
        {
            pool.Return(buffer);
        }

        return rented.Select(b => new WeakReference(b)).ToList();
    }
}
