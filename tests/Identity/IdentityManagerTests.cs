using Weft.Identity;

namespace Weft.Tests.Identity;

public class IdentityManagerTests
{
    private const string Domain = "cluster.local";
    private static readonly SpiffeId A = new(Domain, "demo", "a");
    private static readonly SpiffeId B = new(Domain, "demo", "b");

    private static IdentityManager Start(CaFiles files, TimeProvider? clock = null, TimeSpan? lifetime = null, TimeSpan? checkEvery = null, bool watch = true) =>
        IdentityManager.Start(new IdentityOptions(Domain, files)
        {
            SvidLifetime = lifetime ?? SvidIssuer.DefaultLifetime,
            CheckInterval = checkEvery ?? TimeSpan.FromHours(1),
            WatchFiles = watch,
        }, clock);

    private static void WaitUntil(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out waiting until {what}");
            Thread.Sleep(50);
        }
    }

    [Fact]
    public void Get_ForAnAllowedServiceAccount_IssuesOnce_ThenServesTheCachedSvid()
    {
        using var dir = new TempDir();
        using var identities = Start(TestCa.Root("root").WriteTo(dir.Path));
        identities.SetAllowed([A, B]);

        var first = identities.Get(A);

        Assert.Same(first, identities.Get(A));
        Assert.Equal(A, first.Id);
        Assert.True(first.Certificate.HasPrivateKey);
        Assert.Equal(TimeSpan.FromHours(24), first.NotAfter - first.IssuedAt.AddTicks(-(first.IssuedAt.Ticks % TimeSpan.TicksPerSecond)));
        Assert.NotSame(first, identities.Get(B));
        Assert.Equal(2, identities.Current.Count);
    }

    [Fact]
    public void Get_ForAServiceAccountWithNoPodOnThisNode_IsRefusedWithTheReason()
    {
        using var dir = new TempDir();
        using var identities = Start(TestCa.Root("root").WriteTo(dir.Path));
        identities.SetAllowed([A]);

        var e = Assert.Throws<IdentityException>(() => identities.Get(B));

        Assert.Equal($"will not issue {B}: no pod with service account b in namespace demo runs on this node", e.Message);
        Assert.Contains("trust domain other.example is not cluster.local",
            Assert.Throws<IdentityException>(() => identities.Get(new SpiffeId("other.example", "demo", "a"))).Message);
    }

    [Fact]
    public void SetAllowed_WithoutAnIdentity_DropsItsSvid_AndRefusesItFromThenOn()
    {
        using var dir = new TempDir();
        using var identities = Start(TestCa.Root("root").WriteTo(dir.Path));
        identities.SetAllowed([A, B]);
        identities.Get(A);
        identities.Get(B);

        identities.SetAllowed([B]);

        Assert.Equal([B], identities.Current.Select(s => s.Id));
        Assert.Throws<IdentityException>(() => identities.Get(A));
    }

    [Fact]
    public void Get_RenewsAtHalfLife_AndNeverHandsOutAnExpiredSvid()
    {
        using var dir = new TempDir();
        var clock = new ManualClock();
        using var identities = Start(TestCa.Root("root").WriteTo(dir.Path), clock, lifetime: TimeSpan.FromHours(2));
        identities.SetAllowed([A]);
        var first = identities.Get(A);
        // Half of the lifetime; X.509 keeps whole seconds, so within a second of issue + 1 h.
        Assert.InRange(first.RenewAt, first.IssuedAt + TimeSpan.FromHours(1) - TimeSpan.FromSeconds(1), first.IssuedAt + TimeSpan.FromHours(1));

        clock.Advance(TimeSpan.FromMinutes(59));
        Assert.Same(first, identities.Get(A));

        clock.Advance(TimeSpan.FromMinutes(1));
        var renewed = identities.Get(A);
        Assert.NotSame(first, renewed);
        Assert.NotEqual(first.Certificate.SerialNumber, renewed.Certificate.SerialNumber);
        Assert.Equal(clock.GetUtcNow(), renewed.IssuedAt);

        clock.Advance(TimeSpan.FromHours(30));
        var late = identities.Get(A);
        Assert.True(late.NotAfter > clock.GetUtcNow());
        Assert.True(identities.Verifier.Verify(late.Certificate, late.Intermediates).Verified);
    }

    [Fact]
    public void Background_RenewsDueSvids_WithoutAnyoneAsking()
    {
        using var dir = new TempDir();
        var clock = new ManualClock();
        using var identities = Start(TestCa.Root("root").WriteTo(dir.Path), clock, checkEvery: TimeSpan.FromMilliseconds(100));
        identities.SetAllowed([A]);
        var first = identities.Get(A);

        clock.Advance(TimeSpan.FromHours(12));

        WaitUntil(() => identities.Current.Single().Certificate.SerialNumber != first.Certificate.SerialNumber, "the SVID is renewed in the background");
        Assert.Equal(clock.GetUtcNow(), identities.Current.Single().IssuedAt);
    }

    [Fact]
    public async Task CaRotation_OnDisk_IsPickedUpWithoutRestart_AndOldPeersStillVerifyWhileBothRootsAreTrusted()
    {
        using var dir = new TempDir();
        var rootA = TestCa.Root("root-a");
        var rootB = TestCa.Root("root-b");
        var files = rootA.WriteTo(dir.Path);
        using var identities = Start(files);
        identities.SetAllowed([A]);
        var oldSvid = identities.Get(A);
        var changed = 0;
        identities.AuthorityChanged += _ => Interlocked.Increment(ref changed);

        // Step 1: trust both roots, still sign with A.
        rootA.WriteTo(dir.Path, rootA, rootB);
        WaitUntil(() => Volatile.Read(ref changed) == 1, "the two-root bundle is loaded");
        Assert.Equal(2, identities.Authority.TrustBundle.Count);
        // Step 2: sign with B; both roots stay trusted.
        rootB.WriteTo(dir.Path, rootA, rootB);
        WaitUntil(() => Volatile.Read(ref changed) == 2, "the watcher loads CA B and re-issues");
        Assert.Equal(rootB.Certificate.Thumbprint, identities.Authority.Signer.Thumbprint);

        var reissued = identities.Current.Single();
        Assert.NotSame(oldSvid, reissued);
        Assert.Equal(rootB.Certificate.Subject, reissued.Certificate.Issuer);
        Assert.Same(reissued, identities.Get(A));
        Assert.Equal(A, identities.Verifier.Verify(reissued.Certificate).Id);
        Assert.Equal(A, identities.Verifier.Verify(oldSvid.Certificate).Id);
        // Over real TLS: a peer still holding an SVID from root A talks to a server already on root B.
        var serverSaw = new PeerReport();
        var clientSaw = new PeerReport();
        var outcome = await LoopbackTls.RunAsync(
            identities.Tls.ServerOptions(() => identities.Get(A), serverSaw.Record),
            identities.Tls.ClientOptions(oldSvid, A, clientSaw.Record));
        Assert.True(outcome.Established, $"server: {serverSaw.Reason} client: {clientSaw.Reason}");
        Assert.Equal(A, serverSaw.Id);

        // Step 3: retire root A: its certificates are no longer accepted.
        rootB.WriteTo(dir.Path);
        WaitUntil(() => Volatile.Read(ref changed) == 3, "the bundle without root A is loaded");
        Assert.Single(identities.Authority.TrustBundle);
        Assert.StartsWith("unknown CA", identities.Verifier.Verify(oldSvid.Certificate).Reason);
        serverSaw = new PeerReport();
        outcome = await LoopbackTls.RunAsync(
            identities.Tls.ServerOptions(() => identities.Get(A), serverSaw.Record),
            identities.Tls.ClientOptions(oldSvid, A));
        Assert.False(outcome.Established);
        Assert.StartsWith("unknown CA", serverSaw.Reason);
        Assert.True(identities.Verifier.Verify(identities.Get(A).Certificate).Verified);
    }

    [Fact]
    public void PeriodicCheck_PicksUpANewCa_EvenWithoutTheWatcher()
    {
        using var dir = new TempDir();
        var rootB = TestCa.Root("root-b");
        using var identities = Start(TestCa.Root("root-a").WriteTo(dir.Path), checkEvery: TimeSpan.FromMilliseconds(100), watch: false);

        rootB.WriteTo(dir.Path);

        WaitUntil(() => identities.Authority.Signer.Thumbprint == rootB.Certificate.Thumbprint, "the periodic check loads CA B");
    }

    [Fact]
    public void Start_WithUnusableCaFiles_FailsWithTheReason()
    {
        using var dir = new TempDir();
        var files = TestCa.Root("root").WriteTo(dir.Path);
        File.WriteAllText(files.KeyPath, TestCa.Root("other").KeyPem);

        var e = Assert.Throws<IdentityException>(() => Start(files));

        Assert.Contains("does not belong to", e.Message);
    }
}

/// <summary>Tests that read the agent's log (stderr) run alone, so other tests' lines do not mix in.</summary>
[CollectionDefinition(nameof(StderrCapture), DisableParallelization = true)]
public sealed class StderrCapture
{
}

[Collection(nameof(StderrCapture))]
public class IdentityManagerReloadLogTests
{
    [Fact]
    public void BadNewCaFile_KeepsTheOldCa_AndLogsOneClearError()
    {
        using var dir = new TempDir();
        var root = TestCa.Root("root-a");
        var files = root.WriteTo(dir.Path);
        using var identities = IdentityManager.Start(new IdentityOptions("cluster.local", files) { WatchFiles = false, CheckInterval = TimeSpan.FromHours(1) });
        var id = new SpiffeId("cluster.local", "demo", "a");
        identities.SetAllowed([id]);
        var before = identities.Get(id);
        var original = Console.Error;
        var log = new StringWriter();
        Console.SetError(log);
        try
        {
            File.WriteAllText(files.KeyPath, TestCa.Root("root-b").KeyPem);
            Assert.False(identities.Reload());
            Assert.False(identities.Reload());
            Assert.False(identities.Reload());
        }
        finally
        {
            Console.SetError(original);
        }

        var errors = log.ToString().Split('\n').Where(l => l.Contains(" error identity: ")).ToList();
        var error = Assert.Single(errors);
        Assert.Contains("new CA files not used, keeping CA CN=root-a, O=weft-test", error);
        Assert.Contains($"CA private key {files.KeyPath} does not belong to CA certificate {files.CertificatePath}", error);
        Assert.Equal(root.Certificate.Thumbprint, identities.Authority.Signer.Thumbprint);
        Assert.Same(before, identities.Get(id));

        // Fixing the file is picked up by the next check.
        var rootC = TestCa.Root("root-c");
        rootC.WriteTo(dir.Path);
        Assert.True(identities.Reload());
        Assert.Equal(rootC.Certificate.Subject, identities.Get(id).Certificate.Issuer);
    }
}
