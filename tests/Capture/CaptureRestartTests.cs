using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Weft.Capture;

namespace Weft.Tests.Capture;

/// <summary>
/// A restarted agent adopts what the previous one pinned: the same maps (state survives) and the
/// same links, updated in place to the new programs. Only Uninstall stops capture.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.Kernel)]
public sealed class CaptureRestartTests
{
    private const string PodIp = "10.97.0.2";
    private const string PeerIp = "10.97.0.1";
    private const string Neighbour = "10.97.0.3";

    [PrivilegedFact]
    public async Task Restart_OpenOnSamePinRoot_AdoptsMapsAndLinksWithoutGap_AndUninstallStopsCapture()
    {
        using var sandbox = new CaptureSandbox();
        var (pod, peer) = sandbox.AddLinkedNamespaces(PodIp + "/24", PeerIp + "/24");
        CaptureSandbox.Ip($"-n {Path.GetFileName(pod)} addr add {Neighbour}/24 dev eth0");
        var podCapture = new PodCapture(IPAddress.Parse(PodIp), null, FailOpen: false);
        var cookie = NetNamespace.GetCookie(pod);
        using var outboundListener = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Loopback, 15001));
        using var inboundListener = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Any, 15006));
        using var app = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Parse(Neighbour), 80));
        var appPort = new IPEndPoint(IPAddress.Parse(PodIp), 8080);

        var first = BpfCapture.Open(sandbox.Options);
        first.EnrollPod(cookie, podCapture);
        first.AttachInbound(pod, podCapture, inboundListener);
        var linksBefore = PinnedLinks(sandbox.PinRoot);
        first.Dispose();

        // with no agent process holding anything, the pinned links keep capturing
        var duringGap = sandbox.StartClient(pod, "10.1.2.3", 80);
        using var gapAccepted = await CaptureSandbox.AcceptAsync(outboundListener);
        Assert.StartsWith("connected", await CaptureSandbox.ReadLineAsync(duringGap));

        using (var second = BpfCapture.Open(sandbox.Options))
        {
            Assert.True(second.IsEnrolled(cookie)); // the entry written before the restart
            var linksAfter = PinnedLinks(sandbox.PinRoot);
            Assert.Equal(linksBefore.Keys.Order(), linksAfter.Keys.Order());
            foreach (var (name, before) in linksBefore)
            {
                Assert.Equal(before.LinkId, linksAfter[name].LinkId); // same link: never detached
                Assert.NotEqual(before.ProgramId, linksAfter[name].ProgramId); // new program swapped in
            }

            // what sockops recorded before the restart is in the adopted orig_dst map
            var gapPort = (ushort)((IPEndPoint)gapAccepted.RemoteEndPoint!).Port;
            Assert.True(second.TryTakeOriginalDestination(cookie, gapPort, AddressFamily.InterNetwork, out var gapOriginal));
            Assert.Equal(new IPEndPoint(IPAddress.Parse("10.1.2.3"), 80), gapOriginal);

            var outbound = sandbox.StartClient(pod, "10.1.2.4", 443);
            using var accepted = await CaptureSandbox.AcceptAsync(outboundListener);
            Assert.StartsWith("connected", await CaptureSandbox.ReadLineAsync(outbound));
            Assert.True(second.TryTakeOriginalDestination(cookie, (ushort)((IPEndPoint)accepted.RemoteEndPoint!).Port, AddressFamily.InterNetwork, out var original));
            Assert.Equal(new IPEndPoint(IPAddress.Parse("10.1.2.4"), 443), original);

            using var inboundClient = await ConnectFromAsync(peer, appPort);
            using var inboundAccepted = await CaptureSandbox.AcceptAsync(inboundListener);
            Assert.Equal(appPort, inboundAccepted.LocalEndPoint);
        }

        BpfCapture.Uninstall(sandbox.PinRoot);

        Assert.False(Directory.Exists(sandbox.PinRoot));
        // a link that is gone is also not held open by anyone (no leaked fd in this process)
        var remaining = AllLinkIds();
        Assert.DoesNotContain(linksBefore.Values, l => remaining.Contains(l.LinkId));
        var direct = sandbox.StartClient(pod, Neighbour, 80);
        using var directAccepted = await CaptureSandbox.AcceptAsync(app);
        Assert.StartsWith("connected", await CaptureSandbox.ReadLineAsync(direct));
        Assert.False(outboundListener.Poll(0, SelectMode.SelectRead));
    }

    [PrivilegedFact]
    public async Task Upgrade_FromLayoutVersion1_ReplacesConfigAdoptsOtherMapsAndKeepsCapturing()
    {
        using var sandbox = new CaptureSandbox();
        var pod = sandbox.AddNamespace("p", PodIp + "/24", Neighbour + "/24");
        var podCapture = new PodCapture(IPAddress.Parse(PodIp), null, FailOpen: false);
        var cookie = NetNamespace.GetCookie(pod);
        using var outboundListener = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Loopback, 15001));
        using (var first = BpfCapture.Open(sandbox.Options))
        {
            first.EnrollPod(cookie, podCapture);
        }
        var maps = Path.Combine(sandbox.PinRoot, "maps");
        var enrolledId = MapId(Path.Combine(maps, "enrolled"));

        // what a version-1 agent left: its weft_config (44 bytes) stamped with version 1
        var v1Config = PinConfig(maps, version: 1);

        using (var second = BpfCapture.Open(sandbox.Options))
        {
            Assert.True(second.IsEnrolled(cookie)); // adopted with its state
            Assert.Equal(enrolledId, MapId(Path.Combine(maps, "enrolled")));
            var config = Path.Combine(maps, "config");
            Assert.NotEqual(v1Config, MapId(config)); // replaced, not rewritten under the old programs
            Assert.Equal(2u, ConfigVersion(config));
            Assert.True(File.Exists(Path.Combine(maps, "agent_sockets")));

            var client = sandbox.StartClient(pod, "10.1.2.3", 80);
            using var accepted = await CaptureSandbox.AcceptAsync(outboundListener);
            Assert.StartsWith("connected", await CaptureSandbox.ReadLineAsync(client));
            Assert.True(second.TryTakeOriginalDestination(cookie, (ushort)((IPEndPoint)accepted.RemoteEndPoint!).Port, AddressFamily.InterNetwork, out var original));
            Assert.Equal(new IPEndPoint(IPAddress.Parse("10.1.2.3"), 80), original);
        }
    }

    [PrivilegedFact]
    public void Open_PinnedLayoutOfUnknownVersion_IsRefusedNamingTheFix_AndLeavesPinsAlone()
    {
        using var sandbox = new CaptureSandbox();
        using (BpfCapture.Open(sandbox.Options))
        {
        }
        var maps = Path.Combine(sandbox.PinRoot, "maps");
        var future = PinConfig(maps, version: 99);

        var error = Assert.Throws<CaptureException>(() => BpfCapture.Open(sandbox.Options));

        Assert.Contains("layout version 99", error.Message);
        Assert.Contains("weft uninstall", error.Message);
        Assert.Equal(future, MapId(Path.Combine(maps, "config")));
    }

    /// <summary>Replaces the pinned config with a 44-byte array map whose version field says <paramref name="version"/>; returns its id.</summary>
    private static int PinConfig(string maps, uint version)
    {
        var path = Path.Combine(maps, "config");
        File.Delete(path);
        Bpftool($"map create {path} type array key 4 value 44 entries 1 name config");
        var value = string.Join(' ', BitConverter.GetBytes(version).Concat(new byte[40]).Select(b => b.ToString(System.Globalization.CultureInfo.InvariantCulture)));
        Bpftool($"map update pinned {path} key 0 0 0 0 value {value}");
        Assert.Equal(version, ConfigVersion(path));
        return MapId(path);
    }

    private static int MapId(string pinned)
    {
        using var doc = JsonDocument.Parse(Bpftool($"-j map show pinned {pinned}"));
        return doc.RootElement.GetProperty("id").GetInt32();
    }

    private static uint ConfigVersion(string pinned)
    {
        using var doc = JsonDocument.Parse(Bpftool($"-j map lookup pinned {pinned} key 0 0 0 0"));
        var value = doc.RootElement.GetProperty("value");
        // bpftool prints the struct by BTF when the map has it, raw bytes otherwise
        if (value.ValueKind == JsonValueKind.Object)
        {
            return value.GetProperty("layout_version").GetUInt32();
        }
        var bytes = value.EnumerateArray().Take(4).Select(b => Convert.ToByte(b.GetString(), 16)).ToArray();
        return BitConverter.ToUInt32(bytes);
    }

    private static Dictionary<string, (int LinkId, int ProgramId)> PinnedLinks(string pinRoot) =>
        Directory.GetFiles(Path.Combine(pinRoot, "links")).ToDictionary(
            path => Path.GetFileName(path),
            path =>
            {
                using var doc = JsonDocument.Parse(Bpftool($"-j link show pinned {path}"));
                return (doc.RootElement.GetProperty("id").GetInt32(), doc.RootElement.GetProperty("prog_id").GetInt32());
            });

    private static HashSet<int> AllLinkIds()
    {
        using var doc = JsonDocument.Parse(Bpftool("-j link show"));
        return doc.RootElement.EnumerateArray().Select(l => l.GetProperty("id").GetInt32()).ToHashSet();
    }

    private static string Bpftool(string arguments)
    {
        var psi = new ProcessStartInfo("bpftool") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in arguments.Split(' '))
        {
            psi.ArgumentList.Add(a);
        }
        using var p = Process.Start(psi)!;
        var output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return p.ExitCode == 0 ? output : throw new InvalidOperationException($"bpftool {arguments}: {p.StandardError.ReadToEnd()}");
    }

    private static async Task<Socket> ConnectFromAsync(string netnsPath, IPEndPoint target)
    {
        var socket = NetNamespace.Run(netnsPath, () => new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp));
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(3));
        await socket.ConnectAsync(target, timeout.Token);
        return socket;
    }
}
