using Weft.Hbone.Internal;

namespace Weft.Tests.Hbone;

public class StreamTableTests
{
    [Fact]
    public void Client_TakesOddIdsInOrder_AndIdsNotYetTakenAreIdle()
    {
        var table = new Http2StreamTable(isClient: true);
        Assert.Equal(1, table.TakeStreamId());
        Assert.Equal(3, table.TakeStreamId());

        Assert.False(table.IsIdle(1));
        Assert.False(table.IsIdle(3));
        Assert.True(table.IsIdle(5));
        Assert.True(table.IsIdle(2)); // a server never opens (pushes) streams to us
        Assert.True(table.IsOurs(3));
        Assert.False(table.IsOurs(2));
    }

    [Fact]
    public void Server_IdsAboveTheLastOneThePeerUsedAreIdle()
    {
        var table = new Http2StreamTable(isClient: false);
        Assert.True(table.IsIdle(1));
        table.AcceptPeerStreamId(7);

        Assert.Equal(7, table.LastPeerStreamId);
        Assert.False(table.IsIdle(1)); // skipped ids are closed, not idle
        Assert.False(table.IsIdle(7));
        Assert.True(table.IsIdle(9));
        Assert.True(table.IsIdle(2)); // the server opens no streams
        Assert.False(table.IsOurs(7));
    }
}
