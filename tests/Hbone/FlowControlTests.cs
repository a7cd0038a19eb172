using Weft.Hbone;
using Weft.Hbone.Internal;
using Weft.Hbone.Internal.FlowControl;

namespace Weft.Tests.Hbone;

public class FlowControlTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Reservation_TakesFromTheStreamAndTheConnectionWindowAtOnce()
    {
        var connection = new ConnectionOutputFlowControl(100);
        var first = new StreamOutputFlowControl(1, 70);
        var second = new StreamOutputFlowControl(3, 70);

        Assert.Equal(60, await connection.ReserveAsync(first, 60, maxPerTurn: 1000));
        Assert.Equal(40, await connection.ReserveAsync(second, 1000, maxPerTurn: 1000));
        Assert.Equal(0, connection.Available);
        Assert.Equal(10, first.Window);
        Assert.Equal(30, second.Window);
    }

    [Fact]
    public async Task Reservation_IsCappedPerTurn_SoStreamsInterleave()
    {
        var connection = new ConnectionOutputFlowControl(1_000_000);
        var stream = new StreamOutputFlowControl(1, 1_000_000);
        Assert.Equal(64 * 1024, await connection.ReserveAsync(stream, 500_000, maxPerTurn: 64 * 1024));
    }

    [Fact]
    public async Task WriterShortOfConnectionWindow_WaitsForAConnectionWindowUpdate()
    {
        var connection = new ConnectionOutputFlowControl(10);
        var stream = new StreamOutputFlowControl(1, 1000);
        Assert.Equal(10, await connection.ReserveAsync(stream, 10, 1000));

        ValueTask<int> waiting = connection.ReserveAsync(stream, 500, 1000);
        Assert.False(waiting.IsCompleted);
        connection.Increase(300);
        Assert.Equal(300, await waiting.AsTask().WaitAsync(Patience));
    }

    [Fact]
    public async Task WriterShortOfStreamWindow_WaitsForThatStreamsWindowUpdate()
    {
        var connection = new ConnectionOutputFlowControl(1000);
        var stream = new StreamOutputFlowControl(1, 0);

        ValueTask<int> waiting = connection.ReserveAsync(stream, 500, 1000);
        Assert.False(waiting.IsCompleted);
        connection.IncreaseStream(stream, 200);
        Assert.Equal(200, await waiting.AsTask().WaitAsync(Patience));
    }

    [Fact]
    public void ConnectionWindowPast2Pow31Minus1_IsAConnectionFlowControlError()
    {
        var connection = new ConnectionOutputFlowControl(HboneSettings.DefaultWindowSize);
        connection.Increase(int.MaxValue - HboneSettings.DefaultWindowSize);
        Assert.Equal(int.MaxValue, connection.Available);
        var e = Assert.Throws<Http2ConnectionException>(() => connection.Increase(1));
        Assert.Equal(Http2ErrorCode.FlowControlError, e.Code);
    }

    [Fact]
    public void StreamWindowPast2Pow31Minus1_IsAStreamFlowControlError()
    {
        var connection = new ConnectionOutputFlowControl(HboneSettings.DefaultWindowSize);
        var stream = new StreamOutputFlowControl(5, int.MaxValue - 10);
        connection.IncreaseStream(stream, 10);
        var e = Assert.Throws<Http2StreamException>(() => connection.IncreaseStream(stream, 1));
        Assert.Equal(Http2ErrorCode.FlowControlError, e.Code);
        Assert.Equal(5, e.StreamId);
    }

    [Fact]
    public void WindowUpdateOfZero_IsAProtocolError_OfTheConnectionOrTheStream()
    {
        var connection = new ConnectionOutputFlowControl(100);
        var stream = new StreamOutputFlowControl(7, 100);

        var onConnection = Assert.Throws<Http2ConnectionException>(() => connection.Increase(0));
        Assert.Equal(Http2ErrorCode.ProtocolError, onConnection.Code);
        var onStream = Assert.Throws<Http2StreamException>(() => connection.IncreaseStream(stream, 0));
        Assert.Equal(Http2ErrorCode.ProtocolError, onStream.Code);
        Assert.Equal(7, onStream.StreamId);
        Assert.Equal(100, connection.Available);
        Assert.Equal(100, stream.Window);
    }

    [Fact]
    public async Task LoweredInitialWindow_LeavesAStreamNegative_AndItSendsOnlyOnceCreditBringsItAboveZero()
    {
        var connection = new ConnectionOutputFlowControl(100_000);
        var stream = new StreamOutputFlowControl(1, 1000);
        Assert.Equal(800, await connection.ReserveAsync(stream, 800, 100_000));

        // The peer lowers SETTINGS_INITIAL_WINDOW_SIZE from 1000 to 100: 200 left becomes -700.
        connection.ChangeInitialWindow([stream], 100 - 1000);
        Assert.Equal(-700, stream.Window);

        ValueTask<int> waiting = connection.ReserveAsync(stream, 5000, 100_000);
        connection.IncreaseStream(stream, 700);
        await Task.Delay(50);
        Assert.False(waiting.IsCompleted);
        connection.IncreaseStream(stream, 50);
        Assert.Equal(50, await waiting.AsTask().WaitAsync(Patience));
    }

    [Fact]
    public void RaisedInitialWindow_PastTheMaximum_IsAConnectionFlowControlError()
    {
        var connection = new ConnectionOutputFlowControl(100);
        var stream = new StreamOutputFlowControl(1, int.MaxValue - 5);
        var e = Assert.Throws<Http2ConnectionException>(() => connection.ChangeInitialWindow([stream], 6));
        Assert.Equal(Http2ErrorCode.FlowControlError, e.Code);
    }

    [Fact]
    public async Task ConnectionAbort_FailsEveryWaitingWriterWithTheAbortError_AndRefusesNewReservations()
    {
        var connection = new ConnectionOutputFlowControl(0);
        var first = new StreamOutputFlowControl(1, 1000);
        var second = new StreamOutputFlowControl(3, 1000);
        Task<int> firstWaiting = connection.ReserveAsync(first, 10, 100).AsTask();
        Task<int> secondWaiting = connection.ReserveAsync(second, 10, 100).AsTask();
        Assert.False(firstWaiting.IsCompleted);

        var abort = new HboneException("keepalive PING not acknowledged");
        connection.Abort(abort);

        Assert.Same(abort, await Assert.ThrowsAsync<HboneException>(() => firstWaiting.WaitAsync(Patience)));
        Assert.Same(abort, await Assert.ThrowsAsync<HboneException>(() => secondWaiting.WaitAsync(Patience)));
        await Assert.ThrowsAsync<HboneException>(() => connection.ReserveAsync(new StreamOutputFlowControl(5, 1000), 10, 100).AsTask());
    }

    [Fact]
    public async Task ClosedStream_FailsItsWaitingWriter_AndAConnectionUpdateNoLongerTouchesIt()
    {
        var connection = new ConnectionOutputFlowControl(0);
        var stream = new StreamOutputFlowControl(1, 1000);
        Task<int> waiting = connection.ReserveAsync(stream, 10, 100).AsTask();

        var closed = new HboneException("stream 1 closed");
        connection.Complete(stream, closed);
        Assert.Same(closed, await Assert.ThrowsAsync<HboneException>(() => waiting.WaitAsync(Patience)));
        connection.Increase(100);
        await Assert.ThrowsAsync<HboneException>(() => connection.ReserveAsync(stream, 10, 100).AsTask());
        Assert.Equal(100, connection.Available);
    }

    [Fact]
    public void ReceiveWindow_OverrunByThePeer_IsReported()
    {
        var window = new InputFlowControl(1000, 250);
        Assert.True(window.TryReceive(1000));
        Assert.False(window.TryReceive(1));
    }

    [Fact]
    public void ReceiveWindow_ReturnsCreditOnlyOnceTheThresholdGathered()
    {
        var window = new InputFlowControl(1000, 250);
        Assert.True(window.TryReceive(600));
        Assert.Equal(0, window.Consume(100));
        Assert.Equal(0, window.Consume(100));
        Assert.Equal(400, window.Available);
        Assert.Equal(300, window.Consume(100));
        Assert.Equal(700, window.Available);
        Assert.Equal(0, window.Consume(1));
    }
}
