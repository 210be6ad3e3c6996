"""The names of C tor's torrc options, so that an option puretor lacks gets the right message.

Read from C tor 0.4.9.11: ``tor --list-torrc-options`` (the options it accepts, the
``__`` ones used by controllers included) and the ``OBSOLETE(...)`` entries of
``src/app/config/config.c`` (names C tor skips with a warning).  Names only: what
puretor implements is defined in `puretor.config.options`.
"""

from __future__ import annotations

CTOR_OPTIONS = frozenset(
    """
    AccelDir AccelName AccountingMax AccountingRule AccountingStart Address AddressDisableIPv6
    AllowNonRFC953Hostnames AlternateBridgeAuthority AlternateDirAuthority AssumeReachable
    AssumeReachableIPv6 AuthDirBadExit AuthDirBadExitCCs AuthDirFastGuarantee
    AuthDirGuardBWGuarantee AuthDirHasIPv6Connectivity AuthDirInvalid AuthDirInvalidCCs
    AuthDirListBadExits AuthDirListMiddleOnly AuthDirMaxServersPerAddr AuthDirMiddleOnly
    AuthDirMiddleOnlyCCs AuthDirPinKeys AuthDirReject AuthDirRejectCCs
    AuthDirRejectRequestsUnderLoad AuthDirSharedRandomness AuthDirTestEd25519LinkKeys
    AuthDirTestReachability AuthDirVoteGuard AuthDirVoteGuardBwThresholdFraction
    AuthDirVoteGuardGuaranteeTimeKnown AuthDirVoteGuardGuaranteeWFU
    AuthDirVoteStableGuaranteeMinUptime AuthDirVoteStableGuaranteeMTBF AuthoritativeDirectory
    AutomapHostsOnResolve AutomapHostsSuffixes AvoidDiskWrites BandwidthBurst BandwidthRate
    Bridge BridgeAuthoritativeDir BridgeDistribution BridgePassword BridgeRecordUsageByCountry
    BridgeRelay CacheDirectory CacheDirectoryGroupReadable CellStatistics CircuitBuildTimeout
    CircuitPadding CircuitPriorityHalflife CircuitsAvailableTimeout CircuitStreamTimeout
    ClientBootstrapConsensusAuthorityDownloadInitialDelay
    ClientBootstrapConsensusAuthorityOnlyDownloadInitialDelay
    ClientBootstrapConsensusFallbackDownloadInitialDelay
    ClientBootstrapConsensusMaxInProgressTries ClientDNSRejectInternalAddresses
    ClientOnionAuthDir ClientOnly ClientPreferIPv6DirPort ClientPreferIPv6ORPort
    ClientRejectInternalAddresses ClientTransportPlugin ClientUseIPv4 ClientUseIPv6
    CompiledProofOfWorkHash ConfluxClientUX ConfluxEnabled ConnDirectionStatistics
    ConnectionPadding ConnLimit ConsensusParams ConstrainedSockets ConstrainedSockSize
    ContactInfo ControlPort ControlPortFileGroupReadable ControlPortWriteToFile ControlSocket
    ControlSocketsGroupWritable CookieAuthentication CookieAuthFile CookieAuthFileGroupReadable
    CountPrivateBandwidth DataDirectory DataDirectoryGroupReadable DirAllowPrivateAddresses
    DirAuthority DirAuthorityFallbackRate DirCache DirPolicy DirPort DirPortFrontPage
    DirReqStatistics DisableAllSwap DisableDebuggerAttachment DisableNetwork DisableOOSCheck
    DNSPort DormantCanceledByStartup DormantClientTimeout DormantOnFirstStartup
    DormantTimeoutDisabledByIdleStreams DormantTimeoutEnabled DoSCircuitCreationBurst
    DoSCircuitCreationDefenseTimePeriod DoSCircuitCreationDefenseType DoSCircuitCreationEnabled
    DoSCircuitCreationMinConnections DoSCircuitCreationRate DoSConnectionConnectBurst
    DoSConnectionConnectDefenseTimePeriod DoSConnectionConnectRate DoSConnectionDefenseType
    DoSConnectionEnabled DoSConnectionMaxConcurrentCount DoSRefuseSingleHopClientRendezvous
    DoSStreamCreationBurst DoSStreamCreationDefenseType DoSStreamCreationEnabled
    DoSStreamCreationRate DownloadExtraInfo EnforceDistinctSubnets EntryNodes EntryStatistics
    ExcludeExitNodes ExcludeNodes ExitNodes ExitPolicy ExitPolicyRejectLocalInterfaces
    ExitPolicyRejectPrivate ExitPortStatistics ExitRelay ExtendAllowPrivateAddresses
    ExtendByEd25519ID ExtORPort ExtORPortCookieAuthFile ExtORPortCookieAuthFileGroupReadable
    ExtraInfoStatistics FallbackDir FamilyId FamilyKeyDirectory FascistFirewall
    FetchDirInfoEarly FetchDirInfoExtraEarly FetchHidServDescriptors FetchServerDescriptors
    FetchUselessDescriptors FirewallPorts GeoIPExcludeUnknown GeoIPFile GeoIPv6File
    GuardfractionFile GuardLifetime HardwareAccel HashedControlPassword HeartbeatPeriod
    HiddenServiceAllowUnknownPorts HiddenServiceDir HiddenServiceDirGroupReadable
    HiddenServiceEnableIntroDoSBurstPerSec HiddenServiceEnableIntroDoSDefense
    HiddenServiceEnableIntroDoSRatePerSec HiddenServiceExportCircuitID HiddenServiceMaxStreams
    HiddenServiceMaxStreamsCloseCircuit HiddenServiceNonAnonymousMode
    HiddenServiceNumIntroductionPoints HiddenServiceOnionBalanceInstance HiddenServicePort
    HiddenServicePoWDefensesEnabled HiddenServicePoWQueueBurst HiddenServicePoWQueueRate
    HiddenServiceSingleHopMode HiddenServiceStatistics HiddenServiceVersion HSLayer2Nodes
    HSLayer3Nodes HTTPProxy HTTPProxyAuthenticator HTTPSProxy HTTPSProxyAuthenticator
    HTTPTunnelPort IPv6Exit KeepalivePeriod KeepBindCapabilities KeyDirectory
    KeyDirectoryGroupReadable KISTSchedRunInterval KISTSockBufSizeFactor
    LearnCircuitBuildTimeout Log LogMessageDomains LogTimeGranularity LongLivedPorts
    MainloopStats MapAddress MaxAdvertisedBandwidth MaxCircuitDirtiness MaxClientCircuitsPending
    MaxConsensusAgeForDiffs MaxHSDirCacheBytes MaxMemInQueues MaxOnionQueueDelay
    MaxUnparseableDescSizeToLog MetricsPort MetricsPortPolicy MiddleNodes
    MinimalAcceptedServerVersion MinMeasuredBWsForAuthToIgnoreAdvertised
    MinUptimeHidServDirectoryV2 MyFamily NATDPort NewCircuitPeriod Nickname NodeFamily NoExec
    NumCPUs NumDirectoryGuards NumEntryGuards NumPrimaryGuards OfflineMasterKey ORPort
    OutboundBindAddress OutboundBindAddressExit OutboundBindAddressOR OutboundBindAddressPT
    OverloadStatistics PaddingStatistics PathBiasCircThreshold PathBiasDropGuards
    PathBiasExtremeRate PathBiasExtremeUseRate PathBiasNoticeRate PathBiasNoticeUseRate
    PathBiasScaleThreshold PathBiasScaleUseThreshold PathBiasUseThreshold PathBiasWarnRate
    PathsNeededToBuildCircuits PerConnBWBurst PerConnBWRate PidFile ProtocolWarnings
    PublishHidServDescriptors PublishServerDescriptor ReachableAddresses ReachableDirAddresses
    ReachableORAddresses RecommendedClientVersions RecommendedServerVersions RecommendedVersions
    ReconfigDropsBridgeDescs ReducedCircuitPadding ReducedConnectionPadding ReducedExitPolicy
    ReevaluateExitPolicy RefuseUnknownExits RejectPlaintextPorts RelayBandwidthBurst
    RelayBandwidthRate RephistTrackTime RunAsDaemon SafeLogging SafeSocks Sandbox Schedulers
    ServerDNSAllowBrokenConfig ServerDNSAllowNonRFC953Hostnames ServerDNSDetectHijacking
    ServerDNSRandomizeCase ServerDNSResolvConfFile ServerDNSSearchDomains ServerDNSTestAddresses
    ServerTransportListenAddr ServerTransportOptions ServerTransportPlugin ShutdownWaitLength
    SigningKeyLifetime Socks4Proxy Socks5Proxy Socks5ProxyPassword Socks5ProxyUsername
    SocksPolicy SocksPort SocksTimeout SSLKeyLifetime StrictNodes SyslogIdentityTag TCPProxy
    TestingAuthDirTimeToLearnReachability TestingAuthKeyLifetime TestingAuthKeySlop
    TestingBridgeBootstrapDownloadInitialDelay TestingBridgeDownloadInitialDelay
    TestingClientConsensusDownloadInitialDelay TestingClientDownloadInitialDelay
    TestingClientMaxIntervalWithoutRequest TestingDirAuthVoteExit TestingDirAuthVoteExitIsStrict
    TestingDirAuthVoteGuard TestingDirAuthVoteGuardIsStrict TestingDirAuthVoteHSDir
    TestingDirAuthVoteHSDirIsStrict TestingDirConnectionMaxStall TestingEnableCellStatsEvent
    TestingEnableConnBwEvent TestingLinkCertLifetime TestingLinkKeySlop
    TestingMinExitFlagThreshold TestingMinFastFlagThreshold TestingMinTimeToReportBandwidth
    TestingServerConsensusDownloadInitialDelay TestingServerDownloadInitialDelay
    TestingSigningKeySlop TestingTorNetwork TestingV3AuthInitialDistDelay
    TestingV3AuthInitialVoteDelay TestingV3AuthInitialVotingInterval
    TestingV3AuthVotingStartOffset TestSocks TokenBucketRefillInterval TrackHostExits
    TrackHostExitsExpire TransPort TransProxyType TruncateLogFile UnixSocksGroupWritable
    UpdateBridgesFromAuthority UseBridges UseDefaultFallbackDirs UseEntryGuards UseGuardFraction
    UseMicrodescriptors User V3AuthDistDelay V3AuthNIntervalsValid V3AuthoritativeDirectory
    V3AuthUseLegacyKey V3AuthVoteDelay V3AuthVotingInterval V3BandwidthsFile
    VanguardsLiteEnabled VersioningAuthoritativeDirectory VirtualAddrNetworkIPv4
    VirtualAddrNetworkIPv6 WarnPlaintextPorts __AllDirActionsPrivate __AlwaysCongestionControl
    __ControlPort __DirPort __DisablePredictedCircuits __DisableSignalHandlers __DNSPort
    __ExtORPort __HashedControlSessionPassword __HTTPTunnelPort __LeaveStreamsUnattached
    __MetricsPort __NATDPort __ORPort __OwningControllerFD __OwningControllerProcess
    __ReloadTorrcOnSIGHUP __SbwsExit __SocksPort __TransPort
    """.split()
)

# C tor accepts these and ignores them with 'Skipping obsolete configuration option'.
CTOR_OBSOLETE = frozenset(
    """
    AllowDotExit AllowInvalidNodes AllowSingleHopCircuits AllowSingleHopExits
    AlternateHSAuthority AuthDirBadDir AuthDirBadDirCCs AuthDirRejectUnlisted AuthDirListBadDirs
    AuthDirMaxServersPerAuthAddr CircuitIdleTimeout ClientAutoIPv6ORPort ControlListenAddress
    DirListenAddress DisableIOCP DisableV2DirectoryInfo_ DynamicDHGroups DNSListenAddress
    TestingEnableTbEmptyEvent TestingEstimatedDescriptorPropagationTime ExcludeSingleHopRelays
    FallbackNetworkstatusFile FastFirstHopPK FetchV2Networkstatus Group HidServDirectoryV2
    HiddenServiceAuthorizeClient HidServAuth CloseHSClientCircuitsImmediatelyOnTimeout
    CloseHSServiceRendCircuitsImmediatelyOnTimeout AndroidIdentityTag MaxOnionsPending
    NamingAuthoritativeDirectory NATDListenAddress PredictedPortsRelevanceTime WarnUnsafeSocks
    ORListenAddress PathBiasDisableRate PathBiasScaleFactor PathBiasMultFactor
    PathBiasUseCloseCounts OptimisticData PortForwarding PortForwardingHelper
    PreferTunneledDirConns RecommendedPackages RunTesting SchedulerLowWaterMark__
    SchedulerHighWaterMark__ SchedulerMaxFlushCells__ SocksListenAddress StrictEntryNodes
    StrictExitNodes Support022HiddenServices Tor2webMode Tor2webRendezvousPoints TLSECGroup
    TransListenAddress TunnelDirConns UseEntryGuardsAsDirGuards UseNTorHandshake
    UserspaceIOCPBuffers V1AuthoritativeDirectory V2AuthoritativeDirectory
    VoteOnHidServDirectoriesV2 UseFilteringSSLBufferevents __UseFilteringSSLBufferevents
    TestingConsensusMaxDownloadTries ClientBootstrapConsensusMaxDownloadTries
    ClientBootstrapConsensusAuthorityOnlyMaxDownloadTries TestingDescriptorMaxDownloadTries
    TestingMicrodescMaxDownloadTries TestingCertMaxDownloadTries
    """.split()
)
