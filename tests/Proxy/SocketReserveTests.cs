using System.Net.Sockets;
using Weft.Capture;
using Weft.Proxy;
using Weft.Tests.Capture;

namespace Weft.Tests.Proxy;

/// <summary>Sockets made ahead in a real network namespace: where they are made, when, and that none outlive the pod.</summary>
[Trait(TestGroups.Trait, TestGroups.Kernel)]
public sealed class SocketReserveTests
{
    [PrivilegedFact]
    public void ABusyNamespaceGetsSocketsInBatches_EachMadeInThatNamespace_NoneLeftAfterRelease()
    {
        using var sandbox = new CaptureSandbox();
        var path = sandbox.AddNamespace("r");
        var taken = new List<Socket>();
        try
        {
            var cookie = NetNamespace.GetCookie(path);
            for (var i = 0; i < 40; i++)
            {
                taken.Add(SocketReserve.Take(path, i % 4 == 0 ? AddressFamily.InterNetworkV6 : AddressFamily.InterNetwork));
            }

            Assert.All(taken, s => Assert.Equal(cookie, NetNamespace.GetCookie(s)));
            Assert.All(taken, s => Assert.True(s.NoDelay));
            Assert.Equal(40, taken.Select(s => s.Handle).Distinct().Count());

            // taken in quick succession: the namespace's thread made them in batches, and some wait for the next ones
            var held = SocketReserve.HeldFor(path);
            Assert.InRange(held, 1, 2 * (SocketReserve.MaxBatch - 1));

            // the pod leaves: what was made ahead is closed, and a new take makes a new one
            SocketReserve.Release(path);
            Assert.Equal(0, SocketReserve.HeldFor(path));
            using var after = SocketReserve.Take(path, AddressFamily.InterNetwork);
            Assert.Equal(cookie, NetNamespace.GetCookie(after));
        }
        finally
        {
            foreach (var s in taken)
            {
                s.Dispose();
            }

            SocketReserve.Release(path);
            NetNamespace.Release(path);
        }
    }

    [PrivilegedFact]
    public void ANamespaceThatIsNotBusy_GetsOneAtATime_AndHoldsNone()
    {
        using var sandbox = new CaptureSandbox();
        var path = sandbox.AddNamespace("q");
        try
        {
            for (var i = 0; i < 3; i++)
            {
                using var socket = SocketReserve.Take(path, AddressFamily.InterNetwork);
                Assert.Equal(0, SocketReserve.HeldFor(path));
                Thread.Sleep(150);
            }
        }
        finally
        {
            SocketReserve.Release(path);
            NetNamespace.Release(path);
        }
    }
}
